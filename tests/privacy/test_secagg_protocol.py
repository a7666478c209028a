"""Whole SecAgg+ rounds in memory: sites and server as the protocol's pure
logic, the messages passed by hand. The sum is FedAvg's within the
quantization error; a site dropping after it masked does not stop the
round; a site revealing a share it was never dealt is caught and set
aside; keys the server substitutes are refused by the sites."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from shoal.privacy.secagg import (
    Credential,
    MaskedSum,
    ProtocolError,
    RoundConfig,
    ServerRound,
    SiteRound,
    issue_credential,
    mean_update,
    remove_masks,
)
from shoal.provision.pki import CertificateAuthority
from shoal.provision.project import Participant

JOB = "job-0001"


def config(
    n: int, *, threshold: int, degree: int = 0, max_weight: int = 1000, bits: int = 32
) -> RoundConfig:
    return RoundConfig(
        round=1,
        sites=tuple(f"site-{i}" for i in range(1, n + 1)),
        graph_seed=9,
        degree=degree,
        threshold=threshold,
        bits=bits,
        clip_range=1.0,
        max_weight=max_weight,
    )


@dataclass
class Run:
    """A round's sites and server, and hooks to misbehave between stages."""

    cfg: RoundConfig
    creds: dict[str, Credential] = field(default_factory=dict)
    ca_pem: bytes | None = None
    #: Sites that leave after sending their masked update.
    drop_after_mask: set[str] = field(default_factory=set)
    #: Called on each site's reveal before the server reads it.
    tamper_reveal: Callable[[str, dict[str, Any]], None] | None = None
    #: Called on the key list before the sites read it.
    tamper_keys: Callable[[dict[str, Any]], None] | None = None

    def complete(self, updates, weights, old):  # type: ignore[no-untyped-def]
        cfg = self.cfg
        server = ServerRound(cfg, job_id=JOB)
        sites = {
            s: SiteRound(cfg, me=s, job_id=JOB, credential=self.creds.get(s), ca_pem=self.ca_pem)
            for s in cfg.sites
        }
        for s, site in sites.items():
            server.add_advertisement(s, site.advertise())
        keys = server.keys_doc()
        if self.tamper_keys:
            self.tamper_keys(keys)
        for s, site in sites.items():
            server.add_shares(s, site.share(keys))
        mask_doc = server.mask_doc()
        specs = {n: a.shape for n, a in old.items() if a.dtype.kind == "f"}
        total = MaskedSum(specs, cfg.ring)
        for s, site in sites.items():
            site.begin_masking(mask_doc)
            m = site.mask(updates[s], weight=weights[s])
            if s not in self.drop_after_mask:
                total.add(s, m.arrays, m.weight)
        unmask = server.unmask_doc(total.sites)
        for s in total.sites:
            doc = sites[s].reveal(unmask)
            if self.tamper_reveal:
                self.tamper_reveal(s, doc)
            server.add_reveal(s, doc)
        remove_masks(total.arrays, total.weight, server.seeds())
        return server, mean_update(old, total, cfg)


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": rng.normal(size=(64, 33)).astype(np.float32),
        "b": rng.normal(size=(33,)).astype(np.float32),
        "steps": np.array([7], dtype=np.int64),
    }


def _updates(sites, rng):  # type: ignore[no-untyped-def]
    return {
        s: {"w": rng.uniform(-0.5, 0.5, (64, 33)), "b": rng.uniform(-0.5, 0.5, (33,))}
        for s in sites
    }


def assert_close(new: dict, want: dict, *, step_bound: float) -> None:
    """``new`` (float32) is ``want`` to within ``step_bound`` (the
    quantization's) plus float32's rounding of the result."""
    for name in ("w", "b"):
        assert new[name].dtype == np.float32
        ulp = np.spacing(np.abs(want[name]).astype(np.float32))
        assert (np.abs(new[name] - want[name]) <= step_bound + ulp).all()


def quant_bound(cfg: RoundConfig, weights: dict, sites) -> float:  # type: ignore[no-untyped-def]
    """Each site's coordinate is off by less than one step after scaling; the
    mean divides the sum by the weights' share of ``max_weight``."""
    return len(sites) * cfg.ring.step * cfg.max_weight / sum(weights[s] for s in sites)


def _fedavg(old, updates, weights, sites):  # type: ignore[no-untyped-def]
    total = sum(weights[s] for s in sites)
    return {n: old[n] + sum(weights[s] * updates[s][n] for s in sites) / total for n in ("w", "b")}


@pytest.mark.parametrize(
    "n,threshold,degree,bits", [(3, 2, 0, 32), (6, 4, 0, 32), (9, 3, 4, 32), (5, 3, 0, 16)]
)
def test_the_unmasked_mean_is_fedavg_within_the_quantization_error(
    n: int, threshold: int, degree: int, bits: int
) -> None:
    rng = np.random.default_rng(n)
    cfg = config(n, threshold=threshold, degree=degree, max_weight=10 * n, bits=bits)
    old = _model(rng)
    updates = _updates(cfg.sites, rng)
    weights = {s: 10 * (i + 1) for i, s in enumerate(cfg.sites)}
    server, new = Run(cfg).complete(updates, weights, old)
    want = _fedavg(old, updates, weights, cfg.sites)
    assert_close(new, want, step_bound=quant_bound(cfg, weights, cfg.sites))
    np.testing.assert_array_equal(new["steps"], old["steps"])  # not floating: kept
    assert not server.inconsistent and not server.dropped


def test_a_site_that_drops_after_masking_leaves_the_others_sum() -> None:
    rng = np.random.default_rng(5)
    cfg = config(5, threshold=3)
    old = _model(rng)
    updates = _updates(cfg.sites, rng)
    weights = dict.fromkeys(cfg.sites, 50)
    server, new = Run(cfg, drop_after_mask={"site-2"}).complete(updates, weights, old)
    assert server.dropped == ["site-2"]
    alive = [s for s in cfg.sites if s != "site-2"]
    want = _fedavg(old, updates, weights, alive)
    assert_close(new, want, step_bound=quant_bound(cfg, weights, alive))


def test_too_many_dropped_sites_fail_at_the_sites_not_silently() -> None:
    rng = np.random.default_rng(6)
    cfg = config(3, threshold=2)
    old = _model(rng)
    with pytest.raises(ProtocolError, match="fewer than the threshold"):
        Run(cfg, drop_after_mask={"site-1", "site-2"}).complete(
            _updates(cfg.sites, rng), dict.fromkeys(cfg.sites, 1), old
        )


def test_a_site_revealing_a_share_it_was_not_dealt_is_caught_and_set_aside() -> None:
    rng = np.random.default_rng(7)
    cfg = config(5, threshold=3)
    old = _model(rng)
    updates = _updates(cfg.sites, rng)
    weights = dict.fromkeys(cfg.sites, 10)

    def lie(site: str, doc: dict[str, Any]) -> None:
        if site == "site-4":
            dealer = next(d for d in doc["b"] if d != site)
            raw = bytearray(base64.b64decode(doc["b"][dealer]))
            raw[-1] ^= 1
            doc["b"][dealer] = base64.b64encode(bytes(raw)).decode()

    server, new = Run(cfg, tamper_reveal=lie).complete(updates, weights, old)
    assert set(server.inconsistent) == {"site-4"}
    assert "does not match" in server.inconsistent["site-4"]
    # The secrets came from the other sites' shares: the sum is still right
    # (site-4's update is in it; its shares were not used).
    want = _fedavg(old, updates, weights, cfg.sites)
    assert_close(new, want, step_bound=quant_bound(cfg, weights, cfg.sites))


def test_a_dealer_whose_shares_do_not_match_its_commitments_is_reported() -> None:
    rng = np.random.default_rng(8)
    cfg = config(4, threshold=3)
    old = _model(rng)
    server = ServerRound(cfg, job_id=JOB)
    sites = {s: SiteRound(cfg, me=s, job_id=JOB) for s in cfg.sites}
    for s, site in sites.items():
        server.add_advertisement(s, site.advertise())
    keys = server.keys_doc()
    for s, site in sites.items():
        doc = site.share(keys)
        if s == "site-1":  # commits to other shares than it deals
            doc["commitments"]["site-2"] = ["0" * 64, "0" * 64]
        server.add_shares(s, doc)
    specs = {n: a.shape for n, a in old.items() if a.dtype.kind == "f"}
    total = MaskedSum(specs, cfg.ring)
    updates = _updates(cfg.sites, rng)
    for s, site in sites.items():
        site.begin_masking(server.mask_doc())
        m = site.mask(updates[s], weight=1)
        total.add(s, m.arrays, m.weight)
    unmask = server.unmask_doc(total.sites)
    for s in total.sites:
        server.add_reveal(s, sites[s].reveal(unmask))
    assert server.reported == {
        "site-2": {"site-1": "the shares it dealt do not match its commitments"}
    }
    assert not server.inconsistent
    remove_masks(total.arrays, total.weight, server.seeds())  # 3 good shares of site-1 remain
    new = mean_update(old, total, cfg)
    ones = dict.fromkeys(cfg.sites, 1)
    assert_close(
        new, _fedavg(old, updates, ones, cfg.sites), step_bound=quant_bound(cfg, ones, cfg.sites)
    )


def test_a_site_reveals_once_and_never_both_secrets() -> None:
    rng = np.random.default_rng(9)
    cfg = config(3, threshold=2)
    server = ServerRound(cfg, job_id=JOB)
    sites = {s: SiteRound(cfg, me=s, job_id=JOB) for s in cfg.sites}
    for s, site in sites.items():
        server.add_advertisement(s, site.advertise())
    for s, site in sites.items():
        server.add_shares(s, site.share(server.keys_doc()))
    for site in sites.values():
        site.begin_masking(server.mask_doc())
        site.mask(_updates(["x"], rng)["x"], weight=1)
    survivors = {"survivors": list(cfg.sites), "dropped": []}
    doc = sites["site-1"].reveal(survivors)
    assert set(doc["b"]) == set(cfg.sites) and not doc["s"]
    with pytest.raises(ProtocolError, match="already"):
        sites["site-1"].reveal({"survivors": ["site-1", "site-2"], "dropped": ["site-3"]})
    with pytest.raises(ProtocolError, match="both"):
        sites["site-2"].reveal({"survivors": list(cfg.sites), "dropped": ["site-3"]})
    with pytest.raises(ProtocolError, match="not listed"):
        sites["site-3"].reveal({"survivors": ["site-1", "site-2"], "dropped": ["site-3"]})


@pytest.fixture(scope="module")
def pki() -> tuple[bytes, dict[str, Credential], dict[str, tuple[bytes, bytes]]]:
    ca = CertificateAuthority.create("proj")
    issued = {
        f"site-{i}": ca.issue(Participant(f"site-{i}", "client", "org"), validity_days=30)
        for i in (1, 2, 3)
    }
    creds = {
        s: issue_credential(site=s, job_id=JOB, cert_pem=c.cert_pem, key_pem=c.key_pem)
        for s, c in issued.items()
    }
    return ca.cert_pem, creds, {s: (c.cert_pem, c.key_pem) for s, c in issued.items()}


def test_signed_keys_complete_a_round(pki) -> None:  # type: ignore[no-untyped-def]
    ca_pem, creds, _ = pki
    rng = np.random.default_rng(10)
    cfg = config(3, threshold=2)
    old = _model(rng)
    updates = _updates(cfg.sites, rng)
    weights = dict.fromkeys(cfg.sites, 3)
    _, new = Run(cfg, creds=creds, ca_pem=ca_pem).complete(updates, weights, old)
    assert_close(
        new,
        _fedavg(old, updates, weights, cfg.sites),
        step_bound=quant_bound(cfg, weights, cfg.sites),
    )


def _substitute_keys(keys: dict[str, Any]) -> None:
    from shoal.privacy.secagg.crypto import KeyPair

    keys["keys"]["site-2"]["s_pk"] = base64.b64encode(KeyPair.generate().public).decode()


def _unsigned(keys: dict[str, Any]) -> None:
    del keys["keys"]["site-2"]["auth"]


def _foreign_cert(keys: dict[str, Any]) -> None:
    other = CertificateAuthority.create("other").issue(
        Participant("site-2", "client", "org"), validity_days=30
    )
    keys["keys"]["site-2"]["auth"]["cert"] = other.cert_pem.decode()


def _wrong_name(keys: dict[str, Any]) -> None:
    keys["keys"]["site-2"]["auth"] = keys["keys"]["site-3"]["auth"]


@pytest.mark.parametrize(
    "tamper,message",
    [
        (_substitute_keys, "site-2's keys for round 1 do not verify"),
        (_unsigned, "site-2's keys are not signed"),
        (_foreign_cert, "not issued by the project's CA"),
        (_wrong_name, "client 'site-3'"),
    ],
)
def test_keys_the_server_substitutes_are_refused(pki, tamper, message: str) -> None:  # type: ignore[no-untyped-def]
    ca_pem, creds, _ = pki
    rng = np.random.default_rng(11)
    cfg = config(3, threshold=2)
    old = _model(rng)
    with pytest.raises(ProtocolError, match=message):
        Run(cfg, creds=creds, ca_pem=ca_pem, tamper_keys=tamper).complete(
            _updates(cfg.sites, rng), dict.fromkeys(cfg.sites, 1), old
        )


def test_a_delegation_is_good_for_its_own_job_only(pki) -> None:  # type: ignore[no-untyped-def]
    ca_pem, creds, kits = pki
    other_job = issue_credential(
        site="site-2", job_id="job-other", cert_pem=kits["site-2"][0], key_pem=kits["site-2"][1]
    )
    # A worker of another job signing with its own delegation: refused here.
    forged = {**creds, "site-2": Credential(**{**other_job.__dict__, "job_id": JOB})}
    rng = np.random.default_rng(12)
    cfg = config(3, threshold=2)
    with pytest.raises(ProtocolError, match="delegation does not verify"):
        Run(cfg, creds=forged, ca_pem=ca_pem).complete(
            _updates(cfg.sites, rng), dict.fromkeys(cfg.sites, 1), _model(rng)
        )


def test_a_site_refuses_a_round_smaller_than_the_jobs_min_clients(pki) -> None:  # type: ignore[no-untyped-def]
    """A server cannot shrink a round to a site and its accomplices: the
    site's daemon put the job's own min_clients in the credential."""
    ca_pem, _, kits = pki
    strict = {
        s: issue_credential(site=s, job_id=JOB, cert_pem=c, key_pem=k, min_sites=3)
        for s, (c, k) in kits.items()
    }
    with pytest.raises(ProtocolError, match="min_clients=3"):
        SiteRound(
            config(2, threshold=2),
            me="site-1",
            job_id=JOB,
            credential=strict["site-1"],
            ca_pem=ca_pem,
        )
    rng = np.random.default_rng(13)
    cfg = config(3, threshold=2)
    with pytest.raises(ProtocolError, match="min_clients=3"):
        # site-3's update never arrives: 2 survivors, and each refuses to reveal.
        Run(cfg, creds=strict, ca_pem=ca_pem, drop_after_mask={"site-3"}).complete(
            _updates(cfg.sites, rng), dict.fromkeys(cfg.sites, 1), _model(rng)
        )
