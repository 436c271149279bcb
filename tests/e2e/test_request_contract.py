"""What a request can ask of the served pipeline beyond k: pages that never repeat, genres to keep or drop,
and SimilarItems with the same filters and explain."""

from __future__ import annotations

import grpc
import pytest

from tests.helpers import USER, item_ids


def genres_of(dataset, items: list[int]) -> list[set[str]]:
    catalogue = dataset.items.set_index("item_id")
    return [set(catalogue.loc[item, "genres"].split("|")) for item in items]


def test_pages_continue_without_repeats_and_end_at_the_limit(client, config):
    first = client.recommend(USER, page_size=10, request_id="paging-1")
    assert [item.position for item in first.items] == list(range(1, 11))
    assert item_ids(first) == item_ids(client.recommend(USER, k=10))  # page 1 is the top 10
    assert first.next_page_token
    # an event between pages: the next page still repeats nothing, though the user changed
    client.record_event(USER, item_ids(first)[0], "view")
    second = client.recommend(USER, page_size=10, page_token=first.next_page_token)
    third = client.recommend(USER, page_size=10, page_token=second.next_page_token)
    served = item_ids(first) + item_ids(second) + item_ids(third)
    assert len(served) == 30 and len(set(served)) == 30
    assert [item.position for item in third.items] == list(range(21, 31))
    for reply in (first, second, third):
        assert all(item.propensity == 1.0 for item in reply.items)  # no exploration rule: deterministic
    # the token belongs to its request: another user, surface or filter is refused
    for changed in ({"user_id": 2}, {"surface": "home"}, {"exclude_genres": ["Drama"]}):
        arguments = {"user_id": USER, "page_size": 10, "page_token": first.next_page_token, **changed}
        with pytest.raises(grpc.RpcError) as err:
            client.recommend(arguments.pop("user_id"), **arguments)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "another request" in err.value.details()
    # pages stop at serving.max_paged_items: the last one carries no token
    limit = config.serving.max_paged_items
    token, pages = "", 0
    while True:
        reply = client.recommend(USER, page_size=50, page_token=token)
        pages += 1
        token = reply.next_page_token
        if not token:
            break
        assert pages * 50 < limit
    assert pages <= -(-limit // 50)


def test_the_requests_genres_keep_and_drop_items_and_fill_the_list(client, dataset):
    # few films are documentaries, and fewer among a user's personal candidates: the genre's popular items
    # join them, so the list is still full
    kept = client.recommend(USER, k=10, include_genres=["Documentary"], explain=True)
    assert len(kept.items) == 10
    assert all("Documentary" in genres for genres in genres_of(dataset, item_ids(kept)))
    assert kept.removed_by_rule["request:genres"] > 0
    dropped = client.recommend(USER, k=20, exclude_genres=["Drama", "Comedy"])
    assert len(dropped.items) == 20
    assert not any(genres & {"Drama", "Comedy"} for genres in genres_of(dataset, item_ids(dropped)))


def test_similar_items_take_the_same_filters_and_explain(client, dataset):
    plain = item_ids(client.similar_items(50, k=10))
    reply = client.similar_items(50, k=10, exclude_item_ids=plain[:2], exclude_genres=["Drama"], explain=True)
    items = item_ids(reply)
    assert len(items) == 10 and not set(plain[:2]) & set(items)
    assert not any("Drama" in genres for genres in genres_of(dataset, items))
    assert reply.removed_by_rule["exclude"] == 2 and reply.removed_by_rule["request:genres"] > 0
    assert all(item.explanation.ranker_score == item.score for item in reply.items)
    scores = [item.score for item in reply.items]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(grpc.RpcError) as err:
        client.similar_items(50, k=10, include_genres=["Nope"])
    assert err.value.details().startswith("include_genres[0]:")
