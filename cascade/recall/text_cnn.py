"""Title text-CNN (Kim, 2014), as the MovieLens two-tower paper we follow uses for movie titles.

Word embeddings -> parallel 1-D convolutions with different window sizes, ReLU -> max-pooling over time per
filter -> two Tanh fully connected layers giving the title vector.
"""

from __future__ import annotations

import torch
from torch import nn


class TitleCNN(nn.Module):
    """title word ids (B, L) int64, 0 = padding -> title vectors (B, out_dim).

    An all-padding title (no words) gives the vector of an empty input, the same for every such title.
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int,
        windows: tuple[int, ...],
        filters_per_window: int,
        out_dim: int,
    ):
        super().__init__()
        self.words = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.windows = tuple(windows)
        self.convs = nn.ModuleList(nn.Conv1d(word_dim, filters_per_window, w) for w in self.windows)
        pooled = filters_per_window * len(self.windows)
        self.fc = nn.Sequential(nn.Linear(pooled, out_dim), nn.Tanh(), nn.Linear(out_dim, out_dim), nn.Tanh())

    def forward(self, title: torch.Tensor) -> torch.Tensor:
        # Pad on the right so that titles shorter than the widest window still give every conv an output.
        width = max(self.windows)
        if title.shape[1] < width:
            title = nn.functional.pad(title, (0, width - title.shape[1]))
        x = self.words(title).transpose(1, 2)  # (B, word_dim, L)
        mask = (title > 0).unsqueeze(1)  # (B, 1, L)
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))  # (B, F, L - window + 1)
            # A window position counts only if it starts on a real word; ReLU output is >= 0, so masking
            # to 0 keeps padding from winning the max without changing real maxima.
            starts = mask[:, :, : h.shape[2]]
            pooled.append((h * starts).amax(dim=2))  # (B, F)
        return self.fc(torch.cat(pooled, dim=1))
