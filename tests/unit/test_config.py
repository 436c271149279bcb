from __future__ import annotations

import pytest
from pydantic import ValidationError

from cascade.config import AppConfig, load_config
from cascade.ranking.config import DINConfig, LightGBMConfig, WideDeepConfig
from cascade.training.ranking import ranking_fingerprint
from cascade.training.recall import recall_fingerprint


def test_toml_loads_with_defaults_and_rejects_unknown_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    path = tmp_path / "cascade.toml"
    path.write_text("seed = 7\n[recall]\nepochs = 3\n[serving]\nport = 6000\n")
    cfg = load_config(path)
    assert (cfg.seed, cfg.recall.epochs, cfg.serving.port) == (7, 3, 6000)
    assert cfg.recall.embedding_dim == AppConfig().recall.embedding_dim
    assert cfg.serving.redis_url is None
    path.write_text("[recall]\nepoch = 3\n")
    with pytest.raises(ValidationError, match="epoch"):
        load_config(path)


def test_redis_url_from_the_environment_wins(tmp_path, monkeypatch):
    path = tmp_path / "cascade.toml"
    path.write_text('[serving]\nredis_url = "redis://file:6379/0"\n')
    monkeypatch.setenv("REDIS_URL", "redis://env:6379/1")
    assert load_config(path).serving.redis_url == "redis://env:6379/1"


def test_fingerprints_change_with_config_and_data_only():
    base = AppConfig()
    same = AppConfig.model_validate({})
    assert recall_fingerprint(base, "data-a") == recall_fingerprint(same, "data-a")
    assert recall_fingerprint(base, "data-a") != recall_fingerprint(base, "data-b")
    more_epochs = AppConfig.model_validate({"recall": {"epochs": base.recall.epochs + 1}})
    assert recall_fingerprint(base, "data-a") != recall_fingerprint(more_epochs, "data-a")
    # serving-only knobs do not force retraining
    other_port = AppConfig.model_validate({"serving": {"port": 1234}, "recall": {"num_candidates": 50}})
    assert recall_fingerprint(base, "d") == recall_fingerprint(other_port, "d")
    # the ranker depends on the recall model it learned from
    assert ranking_fingerprint(base, "d", "r1") != ranking_fingerprint(more_epochs, "d", "r1")
    assert ranking_fingerprint(base, "d", "r1") != ranking_fingerprint(base, "d", "r2")  # a retrained recall


def test_a_saved_resolved_config_loads_back_from_json(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    cfg = AppConfig.model_validate({"seed": 9, "serving": {"processes": 3, "port": 6100}})
    path = tmp_path / "resolved.json"
    path.write_text(cfg.model_dump_json())
    assert load_config(path) == cfg
    path.write_text('{"serving": {"proceses": 2}}')
    with pytest.raises(ValidationError, match="proceses"):
        load_config(path)


def test_process_ports_name_each_process_and_stay_clear_of_the_shared_port():
    serving = AppConfig.model_validate(
        {"serving": {"host": "127.0.0.1", "port": 50061, "processes": 3, "process_ports": 50071}}
    ).serving
    assert serving.process_addresses() == ["127.0.0.1:50071", "127.0.0.1:50072", "127.0.0.1:50073"]
    assert AppConfig().serving.process_addresses() == []
    ipv6 = AppConfig.model_validate({"serving": {"host": "::1", "processes": 2, "process_ports": 50071}})
    assert ipv6.serving.process_addresses() == ["[::1]:50071", "[::1]:50072"]
    with pytest.raises(ValidationError, match="process_ports"):
        AppConfig.model_validate({"serving": {"port": 50072, "processes": 3, "process_ports": 50071}})
    with pytest.raises(ValidationError, match="process_ports"):
        AppConfig.model_validate({"serving": {"processes": 4, "process_ports": 65533}})


def test_each_ranker_has_its_own_settings_chosen_by_type(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    path = tmp_path / "cascade.toml"
    path.write_text('[ranking]\nals_factors = 8\n[ranking.model]\ntype = "din"\nepochs = 3\nitem_dim = 32\n')
    ranking = load_config(path).ranking
    assert (ranking.type, ranking.model.epochs, ranking.model.item_dim, ranking.als_factors) == (
        "din",
        3,
        32,
        8,
    )
    assert AppConfig().ranking.type == "lightgbm"
    # a setting of another ranker is an unknown key of this one
    path.write_text('[ranking.model]\ntype = "lightgbm"\nitem_dim = 32\n')
    with pytest.raises(ValidationError, match="item_dim"):
        load_config(path)
    path.write_text('[ranking.model]\ntype = "xgboost"\n')
    with pytest.raises(ValidationError, match="lightgbm"):
        load_config(path)
    # evaluate ranking trains every ranker: the chosen one with its settings, the others with defaults
    assert ranking.with_ranker("din") is ranking
    assert ranking.with_ranker("wide_deep").model == WideDeepConfig()
    assert ranking.with_ranker("wide_deep").als_factors == 8


def test_configs_from_before_the_per_ranker_split_still_load(tmp_path, monkeypatch, caplog):
    """Flat [ranking] keys move to ranking.model when they belong to the chosen ranker; one of another
    ranker (which that ranker never read) is dropped with a warning naming its new place."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    path = tmp_path / "old.toml"
    path.write_text('[ranking]\ntype = "din"\nepochs = 3\ndin_item_dim = 32\nlgb_rounds = 10\nthreads = 1\n')
    with caplog.at_level("WARNING", logger="cascade.ranking.config"):
        ranking = load_config(path).ranking
    assert ranking.model == DINConfig(epochs=3, item_dim=32) and ranking.threads == 1
    assert "ranking.lgb_rounds (now ranking.model.rounds of lightgbm)" in caplog.text
    # the repository's own cascade.toml before the split: lightgbm with the neural rankers' epochs
    path.write_text('[ranking]\ntype = "lightgbm"\nepochs = 6\n')
    assert load_config(path).ranking.model == LightGBMConfig()
    assert "ranking.epochs (now ranking.model.epochs of din and wide_deep)" in caplog.text
    path.write_text('[ranking]\nlgb_rounds = 20\nwide_crosses = [["gender", "genre"]]\n')
    assert load_config(path).ranking.model == LightGBMConfig(rounds=20)
    # old keys beside the new section: ambiguous, so refused with the new key named
    path.write_text('[ranking]\nepochs = 3\n[ranking.model]\ntype = "din"\n')
    with pytest.raises(ValidationError, match=r"ranking\.model\.epochs"):
        load_config(path)
    # a resolved config saved in an old artifact manifest (every flat key present) loads back
    old = {"ranking": {"type": "wide_deep", "embedding_dim": 8, "din_item_dim": 48, "lgb_rounds": 300}}
    assert AppConfig.model_validate(old).ranking.model == WideDeepConfig(embedding_dim=8)


def test_every_key_can_come_from_the_environment_over_the_file(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('seed = 3\n[serving]\nport = 1\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("CASCADE_SERVING__PORT", "6000")
    monkeypatch.setenv("CASCADE_SERVING__FEATURE_STORE__TIMEOUT_MS", "80")
    monkeypatch.setenv("REDIS_URL", "redis://low:1/0")
    monkeypatch.setenv("CASCADE_SERVING__REDIS_URL", "redis://high:2/0")
    cfg = load_config(path)
    assert type(cfg) is AppConfig
    assert cfg.seed == 3 and cfg.serving.host == "0.0.0.0"  # the file's, where the environment is silent
    assert cfg.serving.port == 6000 and cfg.serving.feature_store.timeout_ms == 80
    assert cfg.serving.redis_url == "redis://high:2/0"
    monkeypatch.setenv("CASCADE_SERVING__PROT", "1")  # a typo fails like one in the file
    with pytest.raises(ValidationError, match="prot"):
        load_config(path)


def test_json_log_lines_carry_the_request_id(capsys):
    import json
    import logging

    from cascade.core.logs import configure_logging, request_id_var

    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        configure_logging(logging.INFO, "json")
        token = request_id_var.set("req-42")
        logging.getLogger("cascade.test").warning("degraded: %s", "stale_features", extra={"user_hash": "ab"})
        request_id_var.reset(token)
        logging.getLogger("cascade.test").info("outside")
        first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    finally:
        root.handlers[:], root.level = saved
    assert first["request_id"] == "req-42" and first["message"] == "degraded: stale_features"
    assert first["level"] == "WARNING" and first["user_hash"] == "ab" and first["time"].endswith("Z")
    assert second["request_id"] == "-"


def test_every_benchmark_scenario_loads_and_keeps_to_itself(monkeypatch):
    """A scenario that fails validation, generates a data set nobody defined, or shares a port, artifacts or
    an embedded Redis with another would only fail (or corrupt the other) an hour into a benchmark."""
    from cascade.bench.serve_load import SCENARIOS_DIR, SYNTHETIC_SIZES, scenario_config

    monkeypatch.delenv("REDIS_URL", raising=False)
    paths = sorted(SCENARIOS_DIR.glob("*.toml"))
    assert {"synthetic-100k", "synthetic-1m", "synthetic-10m", "movielens-100k"} <= {p.stem for p in paths}
    configs = {p.stem: load_config(scenario_config(p.stem)) for p in paths}
    for name, cfg in configs.items():
        dataset = cfg.data.dataset
        assert dataset in SYNTHETIC_SIZES or not dataset.startswith("synthetic"), name
    for field in ("port", "embedded_redis_path"):
        values = [getattr(cfg.serving, field) for cfg in configs.values()]
        assert len(set(values)) == len(values), field
    artifacts = [cfg.artifacts_dir for cfg in configs.values()]
    assert len(set(artifacts)) == len(artifacts)
    own_ports = [
        cfg.serving.process_ports + i
        for cfg in configs.values()
        if cfg.serving.process_ports is not None
        for i in range(cfg.serving.processes)
    ]
    assert len(set(own_ports)) == len(own_ports)
