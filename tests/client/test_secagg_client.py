"""The Client API's part of secure aggregation, on a backend that records
what would go to the server: a site's weights never leave unmasked in a
secure-aggregation job, whatever task the server sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from shoal.client.model import FLModel
from shoal.client.secagg import SecAggSite
from shoal.privacy.secagg import MESSAGE
from shoal.privacy.secagg.messages import decode, encode


@dataclass
class RecordingBackend:
    """What a ClientBackend sends, kept; tasks come from the test."""

    secagg_credential: Any = None
    site_name: str = "site-1"
    job_id: str = "job-1"
    sent: list[FLModel] = field(default_factory=list)

    def send(self, model: FLModel) -> None:
        self.sent.append(model)


def _params() -> dict[str, np.ndarray]:
    return {"w": np.ones((2, 2), np.float32)}


@pytest.mark.parametrize(
    "task",
    [
        FLModel(params=_params(), task="train", current_round=1),
        FLModel(params=_params(), task="submit_model", current_round=1),
    ],
)
def test_a_site_under_a_daemon_refuses_to_send_weights_in_the_clear(task: FLModel) -> None:
    backend = RecordingBackend(secagg_credential=object())
    site = SecAggSite(backend)  # type: ignore[arg-type]
    assert site.receive(task) is None  # never reaches the script
    (answer,) = backend.sent
    assert not answer.params
    assert "unmasked" in decode(answer.extras[MESSAGE], "answer")["error"]


def test_a_validate_task_still_reaches_the_script() -> None:
    backend = RecordingBackend(secagg_credential=object())
    task = FLModel(params=_params(), task="validate", current_round=1)
    assert SecAggSite(backend).receive(task) is task  # type: ignore[arg-type]
    assert backend.sent == []


def test_a_masking_task_with_no_round_begun_is_refused() -> None:
    # A worker restarted mid-round has lost the round's secrets: it sits the
    # round out rather than send its update unmasked.
    backend = RecordingBackend()
    task = FLModel(
        params=_params(),
        extras={MESSAGE: encode({"shared": ["site-1"]})},
        task="train",
        current_round=3,
    )
    site = SecAggSite(backend)  # type: ignore[arg-type]
    assert site.receive(task) is None and not site.masking
    assert "no secure-aggregation round 3" in decode(backend.sent[0].extras[MESSAGE], "a")["error"]


def test_a_round_the_site_finds_too_weak_is_refused_with_the_reason() -> None:
    backend = RecordingBackend()
    setup = {
        "round": 1,
        "sites": ["site-1", "site-2", "site-3", "site-4", "site-5"],
        "graph_seed": 1,
        "degree": 0,
        "threshold": 2,  # not more than half of 5 holders
        "bits": 32,
        "clip_range": 1.0,
        "max_weight": 1,
    }
    task = FLModel(extras={MESSAGE: encode(setup)}, task="secagg_setup", current_round=1)
    assert SecAggSite(backend).receive(task) is None  # type: ignore[arg-type]
    assert "more than half" in decode(backend.sent[0].extras[MESSAGE], "a")["error"]
