"""The training objectives (common.objectives): each loss against a hand computation, each
inner attack doing what its paper says, the mixed path unchanged, CalFAT's prior, fgsm-rs'
catastrophic-overfitting check, the config's refusals and the objectives study."""

from __future__ import annotations

import copy
import dataclasses
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import objectives, protocol, schedules
from common.config import ConfigError, ExperimentConfig
from common.data import augment
from common.models import build_model
from common.objectives import OverfitWatch, build, label_prior, overfitting
from common.partition import split_for
from common.training import FastPath, TrainSettings, train

from .conftest import train_settings
from .test_fast_path import host_syncs  # noqa: F401 (a fixture)
from .toys import EPS, GREY, Decoy, TwoBasins, grey_uint8

BASE = train_settings(lr=0.1, batch_size=8, momentum=0.0, weight_decay=0.0,
                      label_smoothing=0.1, noise_std=0.0, eps=EPS, step=EPS / 2, steps=3,
                      amp=False)


def settings(objective: str, **changes) -> TrainSettings:
    return dataclasses.replace(BASE, objective=objective, **changes)


def near_grey(n: int, seed: int = 0) -> torch.Tensor:
    """Images within 2 eps of the grey image, so the toys' offsets s differ per image."""
    gen = torch.Generator().manual_seed(seed)
    return GREY + (torch.rand(n, 3, 32, 32, generator=gen) * 2 - 1) * 2 * EPS


def loss_of(objective, model, x, y, seed=0):
    """One objective's copies, their logits and its loss, as common.training forms them."""
    copies = objective.copies(model, x, y, torch.Generator().manual_seed(seed))
    logits = model(torch.cat(copies)).float()
    w = torch.tensor(list(objective.weights.values()))
    return copies, logits, (objective.terms(logits, y) * w).sum()


# By-hand pieces, written out from the definitions rather than with torch's fused losses.

def softmax(z):
    e = (z - z.max(1, keepdim=True).values).exp()
    return e / e.sum(1, keepdim=True)


def soft_ce(z, y, alpha):
    """Cross-entropy against soft labels: 1 - alpha + alpha/C on the true class, alpha/C else."""
    c = z.shape[1]
    target = torch.full_like(z, alpha / c)
    target[torch.arange(len(y)), y] += 1 - alpha
    return -(target * softmax(z).log()).sum(1).mean()


def kl(p, q):
    return (p * (p / q).log()).sum(1)


# --- mixed ---------------------------------------------------------------------------------


def train_as_before(model, images, labels, s, seed):
    """The loop of common.training.train before objectives existed (git 31c6ea8), kept as the
    reference that the mixed objective must match bit for bit."""
    from common.attacks import pgd

    fast = FastPath()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    weights = s.part_weights()
    w = torch.tensor([weights[p] for p in weights])
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum,
                                weight_decay=s.weight_decay, foreach=True)
    n, batch = images.shape[0], min(s.batch_size, images.shape[0])
    total, step = -(-n // batch) * s.epochs, 0
    model.train()
    for _ in range(s.epochs):
        order = torch.randperm(n, generator=gen)
        for first in range(0, n, batch):
            idx = order[first:first + batch]
            x, y = fast.layout(augment(images[idx], gen)), labels[idx]
            for group in optimizer.param_groups:
                group["lr"] = schedules.lr_at(s.schedule, s.lr, s.progress_start + (
                    s.progress_end - s.progress_start) * step / total)
            inputs = [x]
            if "adv" in weights:
                inputs.append(pgd(model, x, y, s.eps, s.step, s.steps, s.random_start,
                                  generator=gen))
            if "noise" in weights:
                noise = torch.randn(x.shape, generator=gen)
                inputs.append((x + s.noise_std * noise).clamp_(0.0, 1.0))
            if "clean" not in weights:
                inputs.pop(0)
            logits = model(torch.cat(inputs)).float()
            per_sample = F.cross_entropy(logits, y.repeat(len(inputs)),
                                         label_smoothing=s.label_smoothing,
                                         reduction="none").view(len(inputs), -1)
            loss = (per_sample.mean(1) * w).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1


@pytest.mark.parametrize("changes", [{"weight_adv": 2.0},
                                     {"weight_clean": 0.0, "random_start": False}])
def test_mixed_trains_bit_for_bit_as_before_objectives(cifar, changes):
    s = train_settings(lr=0.05, batch_size=8, steps=2, label_smoothing=0.1, noise_std=0.05,
                       momentum=0.9, weight_decay=2e-4, amp=False, **changes)
    images, labels = cifar.train_x[:16], cifar.train_y[:16]
    models = []
    for run in (train, train_as_before):
        torch.manual_seed(0)
        model = build_model("rrelu", 8)  # RReLU: the global random stream must match too
        kwargs = {"fast": FastPath()} if run is train else {}
        run(model, images, labels, s, seed=3, **kwargs)
        models.append(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(models[0].values(), models[1].values()))


# --- trades --------------------------------------------------------------------------------


def test_trades_loss_by_hand_with_soft_labels_and_noise_copies():
    s = settings("trades", trades_beta=6.0, noise_std=0.1, weight_noise=0.5)
    model, x, y = Decoy(), near_grey(6), torch.tensor([0, 1, 2, 0, 1, 2])
    objective = build(s, y, 3)
    copies, logits, loss = loss_of(objective, model, x, y)
    clean, adv, noisy = copies
    assert torch.equal(clean, x) and (adv - x).abs().max() <= EPS + 1e-6
    assert (noisy - x).std().item() == pytest.approx(0.1, rel=0.1)  # the noise copies
    zc, za, zn = model(clean), model(adv), model(noisy)
    by_hand = (soft_ce(zc, y, 0.1) + 6.0 * kl(softmax(zc), softmax(za)).mean()
               + 0.5 * soft_ce(zn, y, 0.1))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_trades_inner_attack_raises_the_kl_it_maximizes(cifar):
    torch.manual_seed(0)
    model = build_model("relu", 8).eval()
    x = cifar.train_x[:16].float() / 255
    s = settings("trades", steps=5)
    gen = torch.Generator().manual_seed(1)
    start = objectives.small_start(x, torch.Generator().manual_seed(1))
    x_adv = build(s, cifar.train_y[:16], 10).copies(model, x, cifar.train_y[:16], gen)[1]
    # The same signed steps down the KL: fixed-size steps cannot settle at the minimum, so
    # they raise it too, but far less than steps up it.
    log_p = objectives.clean_log_probs(model, x)

    def minus_kl(logits):
        return -objectives.kl_sum(log_p, logits.log_softmax(1))

    down = objectives.ascend(model, x, start, minus_kl, s.eps, s.step, s.steps)
    with torch.no_grad():
        p = softmax(model(x))
        before, after = kl(p, softmax(model(start))), kl(p, softmax(model(x_adv)))
        descended = kl(p, softmax(model(down)))
    assert ((x_adv - x).abs().max() <= EPS + 1e-6)
    assert (after > before).all()
    assert (after > descended).all() and after.mean() > 5 * descended.mean()


# --- mart ----------------------------------------------------------------------------------


def test_mart_loss_by_hand():
    s = settings("mart", mart_beta=6.0)
    model, x, y = Decoy(), near_grey(6), torch.tensor([0, 1, 2, 0, 1, 2])
    copies, logits, loss = loss_of(build(s, y, 3), model, x, y)
    zc, za = model(copies[0]), model(copies[1])
    pc, pa = softmax(zc), softmax(za)
    rows = range(len(y))
    wrong = [max((k for k in range(3) if k != y[i]), key=lambda k: pa[i, k]) for i in rows]
    margin = -torch.stack([torch.log(1.0001 - pa[i, wrong[i]]) for i in rows]).mean()
    p_true = torch.stack([pc[i, y[i]] for i in rows])
    by_hand = soft_ce(za, y, 0.1) + margin + 6.0 * (kl(pc, pa) * (1 - p_true)).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_mart_weights_the_kl_by_the_clean_probability_of_the_true_class():
    y = torch.tensor([0, 0])
    objective = build(settings("mart", mart_beta=1.0), y, 3)
    # The same adversarial logits; the first clean prediction is sure of the true class
    # (weight ~0), the second sure of another (weight ~1).
    adv = torch.tensor([[0.0, 1.0, -1.0], [0.0, 1.0, -1.0]])
    clean = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 8.0]])
    terms = objective.terms(torch.cat([clean, adv]), y)
    pc, pa = softmax(clean), softmax(adv)
    base = F.cross_entropy(adv, y, label_smoothing=0.1) - torch.log(1.0001 - pa[:, 1]).mean()
    with_clean = base + (kl(pc, pa) * (1 - pc[:, 0])).mean()
    with_adv = base + (kl(pc, pa) * (1 - pa[:, 0])).mean()
    assert terms[0].item() == pytest.approx(with_clean.item(), rel=1e-6)
    assert abs(with_clean - with_adv).item() > 0.2  # the two weightings tell apart here


# --- fgsm-rs -------------------------------------------------------------------------------


class Linear(nn.Module):
    """Class-1 logit w . (x - GREY): its input gradient has the sign of w everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(1, 3, 32, 32, generator=torch.Generator()
                                              .manual_seed(0)).sign())

    def forward(self, x):
        z = ((x - GREY) * self.w).flatten(1).sum(1, keepdim=True) * 1e-3
        return torch.cat([torch.zeros_like(z), z], 1)


def test_fgsm_rs_takes_one_step_of_1_25_eps_from_a_random_start_in_the_ball():
    model, x, y = Linear(), torch.full((64, 3, 32, 32), GREY), torch.zeros(64, dtype=torch.long)
    objective = build(settings("fgsm-rs"), y, 2)
    (x_adv,) = objective.copies(model, x, y, torch.Generator().manual_seed(0))
    moved = (x_adv - x) * model.w / EPS  # along the gradient sign, in units of eps
    assert moved.abs().max() <= 1 + 1e-5
    # From d ~ U(-1, 1), one step of 1.25 then clipping: min(d + 1.25, 1). 62.5% land on
    # the edge (d >= -0.25), the rest spread over [0.25, 1): no start (0.0 steps), two
    # steps or a step of eps would put them all (or half) on the edge.
    at_edge = (moved > 1 - 1e-5).float().mean().item()
    assert at_edge == pytest.approx(0.625, abs=0.01)
    assert moved.min().item() == pytest.approx(0.25, abs=0.01)


def test_fgsm_rs_loss_is_the_soft_label_ce_of_its_adversarial_copy():
    model, x, y = Decoy(), near_grey(6), torch.tensor([0, 1, 2, 0, 1, 2])
    copies, logits, loss = loss_of(build(settings("fgsm-rs"), y, 3), model, x, y)
    assert len(copies) == 1
    assert loss.item() == pytest.approx(soft_ce(model(copies[0]), y, 0.1).item(), rel=1e-6)


# --- calfat --------------------------------------------------------------------------------


def test_calfat_loss_by_hand_with_its_logit_scale():
    y = torch.tensor([0, 0, 0, 1])  # prior 3/4, 1/4, 0
    s = settings("calfat", calfat_scale=10.0)
    model, x = TwoBasins(), near_grey(4)
    objective = build(s, y, 2)
    copies, logits, loss = loss_of(objective, model, x, y)
    log_prior = torch.tensor([math.log(0.75), math.log(0.25)])
    by_hand = soft_ce(10 * model(copies[0]) + log_prior, y, 0.1)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # Its attack maximizes the KL of the calibrated predictions, logits + log(prior) / s.
    gen = torch.Generator().manual_seed(0)
    shift = log_prior / 10
    expected = objectives.kl_attack(model, x, (model(x) + shift).log_softmax(1).detach(),
                                    EPS, EPS / 2, 3, gen, shift)
    assert torch.equal(copies[0], expected)


def client_labels(cifar, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A real client of a 2-classes-per-client split: its partition's labels, and those it
    trains on with its share of G (what client/app.py hands to train)."""
    cfg = ExperimentConfig.from_flat({"fl.partition": "classes", "fl.classes-per-client": 2,
                                      "fl.shared-pool": 0.1, "fl.shared-share": share,
                                      "data.val-size": 0})
    plan = split_for(cfg, cifar.train_y.numpy(), 5)
    own = cifar.train_y[torch.from_numpy(plan.partitions[0])]
    shared = cifar.train_y[torch.from_numpy(plan.share(0, share, cfg.seed))]
    return own, torch.cat([own, shared])


def test_calfat_prior_is_the_label_distribution_of_what_the_client_trains_on(cifar):
    own, with_share = client_labels(cifar, 0.4)
    prior = build(settings("calfat"), own, 10).prior
    classes = own.unique()
    assert len(classes) == 2 and (prior > 0).sum() == 2
    for c in classes:
        assert prior[c].item() == pytest.approx((own == c).float().mean().item())
    mixed = build(settings("calfat"), with_share, 10).prior  # G is balanced: every class
    assert (mixed > 0).all() and mixed[classes].sum() > 0.8
    assert torch.allclose(mixed, torch.bincount(with_share, minlength=10) / len(with_share))


def test_calfat_calibration_changes_a_skewed_clients_loss_but_not_a_balanced_ones(cifar):
    torch.manual_seed(0)
    model = build_model("relu", 8).eval()
    x, y = cifar.train_x[:10].float() / 255, cifar.train_y[:10]
    own, _ = client_labels(cifar, 0.0)
    balanced = torch.arange(10).repeat(3)

    def uncalibrated():
        """CalFAT without calibration: TRADES' KL attack, then the CE of its result."""
        objective = build(settings("trades"), y, 10)
        x_adv = objective.copies(model, x, y, torch.Generator().manual_seed(0))[1]
        return x_adv, F.cross_entropy(model(x_adv), y, label_smoothing=0.1)

    def calfat(prior_labels):
        copies, _, loss = loss_of(build(settings("calfat"), prior_labels, 10), model, x, y)
        return copies[0], loss

    x_uncalibrated, loss_uncalibrated = uncalibrated()
    x_balanced, loss_balanced = calfat(balanced)
    x_skewed, loss_skewed = calfat(own)
    assert loss_balanced.item() == pytest.approx(loss_uncalibrated.item(), rel=1e-5)
    assert abs(loss_skewed.item() - loss_uncalibrated.item()) > 0.1
    # The attack is calibrated too. Its first steps follow KL gradients of ~1e-7, whose signs
    # float rounding flips in a few pixels: the balanced attack differs by ~0.06 eps on
    # average, the skewed one by ~0.5 eps.
    assert (x_balanced - x_uncalibrated).abs().mean() < EPS / 5
    assert (x_skewed - x_uncalibrated).abs().mean() > EPS / 3


def test_train_runs_every_objective_syncing_once_and_reports_its_terms(cifar, host_syncs):
    for name in objectives.NAMES:
        host_syncs.clear()
        stats = train(build_model("relu", 8), cifar.train_x[:8], cifar.train_y[:8],
                      settings(name, steps=1, noise_std=0.05), seed=0,
                      fast=FastPath(channels_last=True))
        assert host_syncs == ["tolist"], name  # the statistics, once after the last step
        assert math.isfinite(stats.loss) and stats.noise_loss > 0, name
        assert (stats.clean_loss > 0) == (name in ("mixed", "trades")), name
        assert stats.adv_loss > 0, name


def test_label_prior_counts_classes():
    assert label_prior(torch.tensor([1, 1, 3, 1]), 4).tolist() == [0.0, 0.75, 0.0, 0.25]


# --- fgsm-rs' guard ------------------------------------------------------------------------


def test_overfitting_is_a_fall_of_pgd_accuracy_or_pgd_far_below_fgsm():
    assert not overfitting(0.40, 0.45, None)
    assert not overfitting(0.40, 0.45, 0.45)
    assert overfitting(0.05, 0.10, 0.40)  # Wong et al.: fell by more than 20 points
    assert overfitting(0.05, 0.60, None)  # FGSM is beaten, PGD is not: collapsed
    assert not overfitting(0.05, 0.10, None)  # not robust yet, but not overfitted


@pytest.mark.parametrize("model, flagged", [(TwoBasins(), 1), (Decoy(), 0)])
def test_the_watch_flags_a_model_fgsm_cannot_break_but_pgd_can(model, flagged):
    # TwoBasins: its gradient is 0 at the clean image, so FGSM leaves every image correct,
    # while PGD's random start finds the fooling basin for about half of them. Decoy fools
    # neither (both follow cross-entropy away from the adversarial class).
    cfg = ExperimentConfig.from_flat({"train.objective": "fgsm-rs"})
    watch = OverfitWatch.for_run(cfg, grey_uint8(300), torch.zeros(300, dtype=torch.long))
    assert watch.images.shape[0] == objectives.CHECK_IMAGES
    row = watch(copy.deepcopy(model), model.state_dict(), seed=0)
    assert row["catastrophic_overfitting"] == flagged
    assert row["co_check_fgsm_acc"] == 1.0
    assert row["co_check_pgd10_acc"] == (pytest.approx(0.5, abs=0.1) if flagged else 1.0)
    assert watch.previous == row["co_check_pgd10_acc"]
    assert OverfitWatch.for_run(ExperimentConfig(), grey_uint8(8), torch.zeros(8)) is None


def test_a_resumed_watch_takes_the_last_check_from_rounds_csv():
    """A fall across an interruption is still seen: the previous check comes from the rounds
    before the resumed one (a round without a check, or at or after it, does not count)."""
    cfg = ExperimentConfig.from_flat({"train.objective": "fgsm-rs"})
    watch = OverfitWatch.for_run(cfg, grey_uint8(8), torch.zeros(8, dtype=torch.long))
    rounds = pd.DataFrame({"round": [3, 1, 2, 4], "co_check_pgd10_acc": [0.41, 0.3, None, 0.9]})
    watch.resume(rounds, start_round=4)
    assert watch.previous == 0.41
    assert overfitting(0.15, 0.2, watch.previous)  # fell 26 points across the restart
    fresh = OverfitWatch.for_run(cfg, grey_uint8(8), torch.zeros(8, dtype=torch.long))
    fresh.resume(pd.DataFrame(), start_round=1)  # no round yet: nothing to take
    assert fresh.previous is None


# --- config, protocol, study ---------------------------------------------------------------


@pytest.mark.parametrize("flat, named", [
    ({"train.objective": "trades", "train.adversarial": False},
     ["train.adversarial=false", "train.objective=mixed"]),
    ({"train.objective": "mart", "train.weight-clean": 0.5},
     ["train.weight-clean=0.5", "Leave both at 1.0"]),
    ({"train.objective": "calfat", "attack.random-start": False},
     ["KL divergence", "attack.random-start=true"]),
    ({"train.objective": "fgsm-rs", "attack.random-start": False},
     ["catastrophically", "attack.random-start=true"]),
])
def test_combinations_that_make_no_sense_are_refused_naming_keys_and_fix(flat, named):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat(flat)
    for text in named:
        assert text in str(err.value)


def test_noise_copies_soft_labels_and_mart_without_random_start_are_accepted():
    for name in objectives.NAMES:
        ExperimentConfig.from_flat({"train.objective": name, "train.noise-std": 0.1,
                                    "train.label-smoothing": 0.1, "train.weight-noise": 2.0})
    ExperimentConfig.from_flat({"train.objective": "mart", "attack.random-start": False})


def test_objective_settings_travel_from_config_to_client():
    cfg = ExperimentConfig.from_flat({"train.objective": "calfat", "train.trades-beta": 3.0,
                                      "train.mart-beta": 2.0, "train.fgsm-rs-step": 1.0,
                                      "train.calfat-scale": 10.0})
    s = protocol.settings_from_record(protocol.settings_to_record(protocol.train_settings(cfg, 1)))
    assert (s.objective, s.trades_beta, s.mart_beta, s.fgsm_rs_step, s.calfat_scale) == \
        ("calfat", 3.0, 2.0, 1.0, 10.0)


def test_the_objectives_study_is_the_issue_grid_on_one_held_back_pool():
    from simulation.studies import SHARED_POOL, study_cells

    for scale in ("toy", "cpu", "paper"):
        cells = study_cells("objectives", scale)
        grid = {(c.overrides["train.objective"], c.overrides["fl.partition"],
                 c.overrides["fl.shared-share"]) for c in cells}
        assert grid == {(o, p, a) for o in ("mixed", "trades", "mart", "calfat")
                        for p in ("iid", "classes") for a in (0.0, 0.4)} | {
                            ("fgsm-rs", "iid", 0.0)}
        assert len(cells) == 17
        assert {c.overrides["fl.shared-pool"] for c in cells} == {SHARED_POOL}, scale
        for c in cells:
            cfg = ExperimentConfig.from_flat(c.overrides)
            published = cfg.train.objective != "mixed"
            assert (cfg.train.noise_std == 0) == published, c.name


# --- through Flower ------------------------------------------------------------------------


NEW = tuple(name for name in objectives.NAMES if name != "mixed")
SHARING = {"trades": {"fl.sharing": "none"},
           "mart": {"fl.sharing": "server", "fl.shared-pool": 0.2, "fl.server-steps": 2}}  # G: 10


@pytest.mark.flower
def test_every_objective_trains_a_round_through_flower(data_dir, tmp_path, flower_env,
                                                       monkeypatch):
    """One private simulation SuperLink, one `flwr run` per objective (what the harness runs,
    without a SuperLink per run): 1 client, 1 round, width 8, 64 images. mixed, the default,
    is what every other Flower test runs (one round of it: the centralized test of
    test_simulation.py), so the new four run here. The loss terms in clients.csv show that
    each objective reached the client; fgsm-rs' rounds carry its overfitting check, the
    others' do not. Two runs also carry a sharing mode through Flower (test_sharing.py runs
    `means`, which needs mixed): trades with fl.sharing=none, mart with fl.sharing=server
    (the server fine-tunes on G after aggregating; no image reaches the client)."""
    import pandas as pd

    from simulation.engine import run_app, simulation_link
    from simulation.runner import Resources, write_overrides

    from .processes import kill_all, wait_until_gone

    marker = f"objectives-{tmp_path.name}"
    monkeypatch.setenv("ROBUSTFL_TEST_MARKER", marker)  # inherited by every process below
    out, lines = tmp_path / "runs", []
    tiny = {"data.dir": str(data_dir), "out.dir": str(out), "fl.num-rounds": 1,
            "fl.min-nodes": 1, "data.train-limit": 64, "data.val-size": 16,
            "data.eval-limit": 16, "train.local-epochs": 1, "train.batch-size": 32,
            "model.width": 8, "attack.steps": 1, "eval.attacks": "fgsm", "eval.noise-std": 0.0}
    try:
        with simulation_link(tmp_path / "link") as link:
            for name in NEW:
                folder = tmp_path / name
                folder.mkdir()
                overrides = write_overrides({**tiny, "out.run-name": name,
                                             "train.objective": name, **SHARING.get(name, {})},
                                            folder)
                # One thread, as a sweep's clients have: faster on a shared machine.
                code = run_app(link, overrides, Resources.for_clients(1, 1).federation_config(),
                               lines.append, timeout=300)
                assert code == 0 or (out / name / "final.pt").exists(), "\n".join(lines[-40:])
    finally:
        leftovers = wait_until_gone(marker)
        kill_all(marker)
    assert not leftovers, f"processes left running: {leftovers}"
    for name in NEW:
        status = (out / name / "status.json").read_text()
        assert '"finished"' in status, (name, status)
        clients = pd.read_csv(out / name / "clients.csv")
        assert clients["status"].tolist() == ["ok"], name
        assert clients["adv_loss"].iloc[0] > 0, name
        assert (clients["clean_loss"].iloc[0] > 0) == (name == "trades"), name
        rounds = pd.read_csv(out / name / "rounds.csv")
        assert math.isfinite(rounds["natural_acc"].iloc[0]), name
        checked = {"co_check_pgd10_acc", "co_check_fgsm_acc", "catastrophic_overfitting"}
        assert checked <= set(rounds.columns) if name == "fgsm-rs" \
            else not checked & set(rounds.columns), name
        assert rounds["bytes_down_data"].iloc[0] == 0 and clients["shared_examples"].iloc[0] == 0
        assert ("server_train_seconds" in rounds) == (name == "mart"), name  # fine-tuned
