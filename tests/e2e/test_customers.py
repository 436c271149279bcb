"""GetCustomerProfile over the real service: the customer's self-portrait, and a returning customer's tier
moving with the events they record, in the profile and in Recommend at once."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.helpers import USER


def test_the_profile_holds_demographics_value_genres_and_recent_items(client, dataset):
    profile = client.customer_profile(USER)
    user = dataset.users.set_index("user_id").loc[USER]
    assert profile.demographics.gender == user["gender"] and profile.demographics.age == user["age"]
    assert profile.demographics.zip_code == ""  # left out of a profile people read
    assert profile.value.tier in {"A", "B", "C", "D"} and 1 <= profile.value.value_band <= 5
    assert profile.value.tier == client.recommend(USER, k=5).tier
    # the value model's view (cascade train value): K in [0, 1], its tier, the k-means segment
    assert profile.value.HasField("value_k") and 0 <= profile.value.value_k <= 1
    assert profile.value.k_tier in {"A", "B", "C", "D"} and 1 <= profile.value.cluster <= 4
    assert len(profile.value.indicators) == 14 and profile.value.indicators["frequency"] > 0
    rated = dataset.interactions[dataset.interactions["user_id"] == USER].sort_values("timestamp")
    assert profile.history_length == 50 and profile.events_by_type["rate"] >= 1
    latest = rated["item_id"].tolist()[::-1][: len(profile.recent_items)]
    assert {int(item.item_id) for item in profile.recent_items} <= set(rated["item_id"].tolist())
    assert int(profile.recent_items[0].item_id) in latest[:5]  # ties in time: any order among them
    assert profile.recent_items[0].title and len(profile.top_genres) == 5
    counts = [genre.items for genre in profile.top_genres]
    assert counts == sorted(counts, reverse=True)


def test_unknown_and_bad_users_are_refused_with_their_status(client):
    with pytest.raises(grpc.RpcError) as missing:
        client.customer_profile(987654)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as bad:
        client.customer_profile("")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in bad.value.details()


def test_a_returning_customer_moves_up_from_tier_d_at_once(client, dataset):
    # a D-tier user no other test reads: well beyond the users the rules tests sample
    user = next(u for u in range(900, 944) if client.customer_profile(u).value.tier == "D")
    before = client.customer_profile(user).value
    items = dataset.items["item_id"].tolist()
    now = int(time.time())
    for n in range(8):
        client.record_event(user, items[n], "rate", timestamp=now, event_id=f"back-{user}-{n}", rating=5)
    after = client.customer_profile(user).value
    assert after.events_since_load == 8 and after.moved_since_load
    assert after.recency_score == 5 and after.current_value > before.current_value and after.tier < "D"
    assert client.recommend(user, k=5).tier == after.tier  # the rules' segments see the same tier


def test_the_segments_report_shows_what_each_tier_is_recommended(config, built, tmp_path):

    from cascade.bench import segments_report

    rules = tmp_path / "tiers.toml"  # tier D's rule set: popular items, strongly
    rules.write_text(
        '[[segments]]\nname = "d"\ntiers = ["D"]\n'
        '[[rules]]\nkind = "popularity"\nweight = 3.0\nsegments = ["d"]\n'
    )
    report = segments_report.run(config, "movielens-100k", rules_path=rules)
    assert report["value"] == "activity" and report["customers"] > 500
    recommended = report["recommended"]
    assert set(recommended) == {"A", "B", "C", "D"} and all(row["users"] > 50 for row in recommended.values())
    assert all(sum(share for _, share in row["genres"]) == pytest.approx(1.0) for row in recommended.values())
    # tier D's rule set moved its lists to more popular items; the other tiers' lists are the ranking's own
    d, a = recommended["D"], recommended["A"]
    assert d["mean_popularity_rank"] < 0.95 * d["mean_popularity_rank_without_rules"]
    assert a["mean_popularity_rank"] == a["mean_popularity_rank_without_rules"]
    written = segments_report.write_outputs(report, tmp_path / "segments.json")
    assert (
        "What each tier is recommended" in written["markdown"].read_text() and written["png"].stat().st_size
    )


def test_the_cli_records_an_event_and_reads_the_profile(server):
    import json
    import subprocess
    import sys

    _, port = server
    cli = [sys.executable, "-m", "cascade.cli"]
    target = ["--target", f"127.0.0.1:{port}"]
    user = "930"  # no other test records for this user

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args, *target], capture_output=True, text=True, timeout=60)

    recorded = run("record-event", "--user-id", user, "--item-id", "50", "--type", "rate", "--rating", "4",
                   "--event-id", "cli-1")  # fmt: skip
    again = run("record-event", "--user-id", user, "--item-id", "50", "--type", "rate", "--rating", "4",
                "--event-id", "cli-1")  # fmt: skip
    assert recorded.returncode == 0 and "duplicate" not in recorded.stdout and "duplicate" in again.stdout
    profile = json.loads(run("profile", "--user-id", user, "--json").stdout)
    assert profile["value"]["events_since_load"] == "1" and profile["recent_items"][0]["item_id"] == "50"
    text = run("profile", "--user-id", user)
    assert text.returncode == 0 and f"customer {user}" in text.stdout and "tier " in text.stdout
    bad = run("record-event", "--user-id", user, "--item-id", "50", "--type", "like")
    assert bad.returncode == 1 and "--type" in bad.stderr
    missing = run("profile", "--user-id", "987654")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
