"""The throw-away PostgreSQL server of tests/pg.py works for SQLAlchemy and an Optuna study."""
from __future__ import annotations

import pytest


def test_select_one(postgres_url):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select 1")).scalar() == 1
    finally:
        engine.dispose()


def test_optuna_study(postgres_db):
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(storage=postgres_db, study_name="x",
                                directions=["maximize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(seed=0))
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, [x, x * x])

    # Read it back through a separate storage: it was really written to the database.
    again = optuna.load_study(study_name="x", storage=postgres_db)
    [t] = again.get_trials()
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert t.params == {"x": x} and t.values == [x, x * x]
