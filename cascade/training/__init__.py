"""Offline training, index building and evaluation: one module per stage.

``prepare`` loads a dataset and splits it; ``recall`` trains the two-tower model and mines the channels;
``index`` embeds the catalogue and builds the ANN index; ``ranking`` trains the ranker on labelled recall
candidates; ``evaluate`` measures each stage and the whole pipeline on the held-out window; ``rollback``
moves an artifact back to an earlier version.

Every artifact is trained on the training part of the one temporal split, so evaluation measures it on
interactions it has never seen. The ranker needs labels from outside the data its candidates come from: it
trains on a nested split (the training part split again, the same way), with a recall model fitted on the
inner training part only. Nothing from the evaluation window reaches any artifact.

Serving never imports this package (an import-linter contract and a test hold it to that).
"""
