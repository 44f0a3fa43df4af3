import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import f1_score

import ocbench.tasks.fov_probe as fov_probe
import ocbench.tasks.probe_training as probe_training
from ocbench.data.compartments import COMPARTMENTS
from ocbench.errors import ConfigError, DataError
from ocbench.tasks import TaskResult, get_task, list_tasks

# Small, quickly learnable settings (the protocol's 300 epochs x batch 512 is for real data).
FAST = {
    "fov-mlp": ["epochs=8", "batch_size=32", "lr=0.05"],
    "fov-linear": ["epochs=8", "batch_size=32", "lr=0.4"],
}


def fast_task(name: str, *extra: str):
    task, _ = get_task(name).with_overrides(FAST[name])
    task, _ = task.with_overrides(extra)  # a second call may change a FAST setting
    return task


def separable_problem(seed: int = 0, n: int = 300, dim: int = 24):
    """Each compartment owns one direction of feature space: linearly separable multi-labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 17), dtype=np.uint8)
    labels[np.arange(n), np.arange(n) % 17] = 1
    extra = np.flatnonzero(rng.random(n) < 0.4)
    labels[extra, rng.integers(0, 17, extra.size)] = 1
    basis = np.linalg.qr(rng.standard_normal((dim, 17)))[0].T  # orthonormal rows
    features = (3.0 * labels @ basis + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    order = rng.permutation(n)
    return features, labels, order[:40], np.array_split(order[40:], 5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny problems gain nothing from threads, and on a busy shared machine they stall."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problem():
    return separable_problem()


@pytest.fixture(scope="module")
def mlp_result(problem):
    return fast_task("fov-mlp").run(*problem, seed=0, progress=False, class_names=COMPARTMENTS)


# -- registry and config ------------------------------------------------------------------------
def test_registry_names_and_did_you_mean():
    assert {"fov-mlp", "fov-linear"} <= set(list_tasks())
    with pytest.raises(ConfigError, match="did you mean: fov-mlp"):
        get_task("fov-mpl")


def test_defaults_are_the_protocol():
    mlp = get_task("fov-mlp")
    assert (mlp.epochs, mlp.batch_size, mlp.weight_decay, mlp.betas, mlp.threshold) == (300, 512, 0.04, (0.9, 0.999), 0.5)
    assert mlp.effective_lr == pytest.approx(1e-4 * 512 / 256)
    assert mlp.head() == ((512, 256), 0.5)
    assert mlp.standardize and mlp.resample
    assert mlp.protocol_version == "fov-probe/2" and mlp.main_score == ("val", "macro_f1")
    linear = get_task("fov-linear")
    assert linear.head() == ((), 0.0) and "hidden_dims" not in linear.keys()
    assert linear.protocol_deviations() == {} and mlp.to_dict()["hidden_dims"] == [512, 256]


def test_overrides_parse_with_field_types():
    base = get_task("fov-mlp")
    task, overrides = base.with_overrides(["epochs=50", "lr=1e-3", "betas=0.8,0.95", "hidden_dims=128", "standardize=false"])
    assert (task.epochs, task.lr, task.betas, task.hidden_dims, task.standardize) == (50, 1e-3, (0.8, 0.95), (128,), False)
    assert overrides == {"epochs": 50, "lr": 1e-3, "betas": [0.8, 0.95], "hidden_dims": [128], "standardize": False}
    assert base.epochs == 300  # frozen: the original is untouched
    same, recorded = base.with_overrides(["epochs=300"])
    assert recorded == {"epochs": 300} and same.protocol_deviations() == {}
    assert task.protocol_deviations()["epochs"] == 50


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("epoch=5", "unknown setting 'epoch' .*did you mean epochs.*valid keys: epochs"),
        ("epochs", "not key=value"),
        ("epochs=ten", "epochs: expected an integer"),
        ("epochs=0", "epochs must be an integer >= 1"),
        ("lr=fast", "lr: expected a number"),
        ("betas=0.9", "betas: expected 2"),
        ("dropout=1.5", "dropout must be in"),
        ("standardize=maybe", "standardize: expected true or false"),
        # non-finite and absurd numbers would run for minutes and record a meaningless 0.000
        ("lr=inf", "lr: expected a finite number"),
        ("lr=nan", "lr: expected a finite number"),
        ("lr=1e30", "lr must be in"),
        ("weight_decay=-1", "weight_decay must be in"),
        ("epochs=10000000", "epochs must be at most"),
    ],
)
def test_bad_overrides_are_one_line_config_errors(assignment, message):
    with pytest.raises(ConfigError, match=message) as err:
        get_task("fov-mlp").with_overrides([assignment])
    assert "\n" not in str(err.value)


def test_linear_probe_rejects_mlp_settings():
    with pytest.raises(ConfigError, match="unknown setting 'hidden_dims'"):
        get_task("fov-linear").with_overrides(["hidden_dims=64"])
    with pytest.raises(ConfigError, match="given twice"):
        get_task("fov-linear").with_overrides(["epochs=2", "epochs=3"])


def test_tasks_package_import_is_light():
    code = "import sys, ocbench.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- protocol pieces ---------------------------------------------------------------------------
def test_rarest_label_weights_hand_example():
    labels = np.zeros((6, 17), dtype=np.uint8)
    labels[0, [0, 1]] = 1  # class 0 appears 3x, class 1 appears 2x -> rarest is class 1
    labels[1, 0] = 1
    labels[2, [0, 1]] = 1
    labels[3, 2] = 1  # class 2 appears once
    # rows 4 and 5 have no label: a class of their own with frequency 2
    weights = fov_probe.rarest_label_weights(labels)
    np.testing.assert_allclose(weights, [1 / 2, 1 / 3, 1 / 2, 1 / 1, 1 / 2, 1 / 2])


def test_standardizer_uses_population_stats_and_leaves_constants_unscaled():
    x = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    s = fov_probe.fit_standardizer(x)
    np.testing.assert_allclose(s.mean, [2.0, 5.0])
    np.testing.assert_allclose(s.scale, [1.0, 1.0])  # std of [1, 3] is 1; constant column -> 1
    np.testing.assert_allclose(s.apply(np.array([[4.0, 7.0]], dtype=np.float32)), [[2.0, 2.0]])


def test_standardization_and_resampling_see_training_rows_only(problem, monkeypatch):
    features, labels, test_idx, folds = problem
    fitted, weighted = [], []
    real_fit, real_weights = fov_probe.fit_standardizer, fov_probe.rarest_label_weights

    def spy_fit(x):
        fitted.append(np.array(x))
        return real_fit(x)

    def spy_weights(y):
        weighted.append(np.array(y))
        return real_weights(y)

    monkeypatch.setattr(fov_probe, "fit_standardizer", spy_fit)
    monkeypatch.setattr(fov_probe, "rarest_label_weights", spy_weights)
    fast_task("fov-linear", "epochs=1").run(features, labels, test_idx, folds, progress=False)
    assert len(fitted) == len(weighted) == 5
    for k in range(5):
        train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j != k]))
        seen = fitted[k][np.lexsort(fitted[k].T[::-1])]
        expected = features[train][np.lexsort(features[train].T[::-1])]
        np.testing.assert_array_equal(seen, expected)
        assert weighted[k].shape == (train.size, 17) and weighted[k].sum() == labels[train].sum()


def test_test_rows_cannot_leak_into_training(problem):
    """A huge offset on the test rows only must not change any validation number."""
    features, labels, test_idx, folds = problem
    task = fast_task("fov-mlp", "epochs=2")
    clean = task.run(features, labels, test_idx, folds, seed=3, progress=False)
    shifted = features.copy()
    shifted[test_idx] += 1000.0
    moved = task.run(shifted, labels, test_idx, folds, seed=3, progress=False)
    assert moved.scores["val"]["macro_f1"] == clean.scores["val"]["macro_f1"]
    assert moved.per_class_values["val"] == clean.per_class_values["val"]
    assert moved.scores["test"]["macro_f1"] != clean.scores["test"]["macro_f1"]  # the offset did reach the test rows


# -- training ----------------------------------------------------------------------------------
def test_result_shape(mlp_result):
    r = mlp_result
    assert isinstance(r, TaskResult) and r.task == "fov-mlp" and r.protocol_version == "fov-probe/2"
    assert r.config["epochs"] == 8 and r.device == "cpu" and r.wall_time_s > 0
    for part in ("val", "test"):
        block = r.scores[part]["macro_f1"]
        assert len(block["values"]) == 5 and block["n"] == 5 and block["ddof"] == 1
        assert block["std"] == pytest.approx(np.std(block["values"], ddof=1))
        assert set(r.per_class[part]["f1"]) <= set(COMPARTMENTS) and r.class_names == COMPARTMENTS
        assert np.array(r.per_class_values[part]["f1"]).shape == (5, 17)
    assert r.details["n_test"] == 40 and sum(r.details["n_val"]) == 260
    # each fold model's test predictions are kept and give its test score
    from ocbench.stats import macro_f1

    kept = r.predictions
    assert kept.eval_set == "test" and kept.y_pred.shape == (1, 5, 40, 17) and kept.group_name == "item"
    assert [macro_f1(kept.y_true, kept.y_pred[0, k]) for k in range(5)] == pytest.approx(r.scores["test"]["macro_f1"]["values"])


@pytest.mark.parametrize("name", ["fov-mlp", "fov-linear"])
def test_separable_classes_are_learned_and_shuffled_labels_are_not(problem, mlp_result, name):
    features, labels, test_idx, folds = problem
    result = mlp_result if name == "fov-mlp" else fast_task(name).run(*problem, progress=False)
    shuffled = labels[np.random.default_rng(1).permutation(len(labels))]
    chance = fast_task(name).run(features, shuffled, test_idx, folds, progress=False)
    for part in ("val", "test"):
        assert result.scores[part]["macro_f1"]["mean"] > 0.8
        assert result.scores[part]["macro_f1"]["mean"] - chance.scores[part]["macro_f1"]["mean"] > 0.5


def test_reported_macro_f1_is_scikit_learn_on_the_predictions(problem, monkeypatch):
    features, labels, test_idx, folds = problem
    predictions = []
    real_predict = fov_probe._predict

    def spy_predict(*args):
        out = real_predict(*args)
        predictions.append(out)
        return out

    monkeypatch.setattr(fov_probe, "_predict", spy_predict)
    result = fast_task("fov-linear", "epochs=2").run(*problem, progress=False)
    val_preds, test_preds = predictions[0::2], predictions[1::2]  # per fold: validation, then test
    for k in range(5):
        for part, truth, pred in (("val", labels[folds[k]], val_preds[k]), ("test", labels[test_idx], test_preds[k])):
            present = truth.sum(axis=0) > 0  # the main score averages the classes present
            expected = f1_score(truth[:, present], pred[:, present], average="macro", zero_division=0)
            expected_all = f1_score(truth, pred, average="macro", zero_division=0)
            assert result.scores[part]["macro_f1"]["values"][k] == pytest.approx(expected, abs=1e-12)
            assert result.scores[part]["macro_f1_all"]["values"][k] == pytest.approx(expected_all, abs=1e-12)


def test_same_seed_same_numbers_other_seed_other_numbers(problem, mlp_result):
    again = fast_task("fov-mlp").run(*problem, seed=0, progress=False)
    assert again.scores == mlp_result.scores and again.per_class_values == mlp_result.per_class_values
    assert again.details["final_train_loss"] == mlp_result.details["final_train_loss"]
    other = fast_task("fov-mlp").run(*problem, seed=1, progress=False)
    assert other.details["final_train_loss"] != mlp_result.details["final_train_loss"]
    assert other.per_class_values != mlp_result.per_class_values


def test_stacking_folds_does_not_change_a_folds_numbers(problem):
    task = fast_task("fov-mlp", "epochs=3")
    stacked = task.run(*problem, seed=5, progress=False, max_parallel_folds=5)
    one_by_one = task.run(*problem, seed=5, progress=False)  # the CPU default
    assert stacked.details["fold_groups"] == [[0, 1, 2, 3, 4]]
    assert one_by_one.details["fold_groups"] == [[0], [1], [2], [3], [4]]
    np.testing.assert_allclose(stacked.details["final_train_loss"], one_by_one.details["final_train_loss"], rtol=1e-4)


def test_batched_matmul_path_gives_the_same_numbers(problem, monkeypatch):
    """GPUs multiply all stacked folds in one batched matmul; check that path on CPU."""
    task = fast_task("fov-mlp", "epochs=3")
    per_fold = task.run(*problem, seed=2, progress=False, max_parallel_folds=5)
    monkeypatch.setattr(probe_training, "_matmul_per_fold", lambda dev: False)
    batched = task.run(*problem, seed=2, progress=False, max_parallel_folds=5)
    np.testing.assert_allclose(batched.details["final_train_loss"], per_fold.details["final_train_loss"], rtol=1e-4)


def test_hand_written_backward_matches_autograd(problem):
    """One step, no dropout: the stacked probe's update equals torch.nn + AdamW on the same batch."""
    import torch

    features, labels, test_idx, folds = problem
    train = np.concatenate(folds[1:])
    task = fast_task("fov-mlp", "epochs=1", f"batch_size={train.size}", "hidden_dims=64,32", "dropout=0", "resample=false", "standardize=false")
    plan = probe_training._FoldPlan(0, train, folds[0], None, fov_probe._identity_standardizer(24), seed=11, steps_per_epoch=1)

    class NoBar:
        def update(self, n):
            pass

        def set_postfix(self, **kw):
            pass

    params, _ = probe_training._train_group(task, [plan], features, labels.astype(np.float32), torch.device("cpu"), NoBar())

    # Reference: same initial weights (same generator order), autograd, torch's AdamW.
    gen = torch.Generator().manual_seed(plan.seed)
    dims = [24, 64, 32, 17]
    layers = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        w = torch.empty(d_in, d_out).uniform_(-(d_in**-0.5), d_in**-0.5, generator=gen)
        b = torch.empty(1, d_out).uniform_(-(d_in**-0.5), d_in**-0.5, generator=gen)
        layers.append((w.requires_grad_(), b.requires_grad_()))
    order = torch.randperm(train.size, generator=gen)  # one full-batch step: order is irrelevant
    x = torch.from_numpy(features[train])[order]
    y = torch.from_numpy(labels[train].astype(np.float32))[order]
    opt = torch.optim.AdamW([t for pair in layers for t in pair], lr=task.effective_lr, betas=task.betas, weight_decay=task.weight_decay)
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = torch.relu(h)
    torch.nn.functional.binary_cross_entropy_with_logits(h, y).backward()
    opt.step()
    # Adam's first step moves every weight by about lr (sign of its gradient): a wrong gradient
    # shows as an error of order lr; float rounding on near-zero gradients stays far below.
    tolerance = dict(rtol=0.0, atol=1e-3 * task.effective_lr)
    for (w, b), (w_ref, b_ref) in zip(params, layers):
        torch.testing.assert_close(w[0], w_ref.detach(), **tolerance)
        torch.testing.assert_close(b[0], b_ref.detach(), **tolerance)


# -- bad input ---------------------------------------------------------------------------------
def test_nan_features_are_rejected(problem):
    features, labels, test_idx, folds = problem
    broken = features.copy()
    broken[7, 3] = np.nan
    with pytest.raises(DataError, match=r"features: 1 NaN/inf values \(first at item 7, dim 3\)") as err:
        fast_task("fov-linear").run(broken, labels, test_idx, folds, progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f, l, t, k: (f, l[:, :16], t, k), "labels: expected shape"),
        (lambda f, l, t, k: (f, l, t, [k[0], np.concatenate([k[1], t[:1]]), *k[2:]]), "appears twice"),
        (lambda f, l, t, k: (f, l, np.array([0, 10_000]), k), "the split does not match"),
        (lambda f, l, t, k: (f, l, t, k[:1]), "at least 2 folds"),
        (lambda f, l, t, k: (f[:, :, None], l, t, k), "features: expected"),
    ],
)
def test_inconsistent_inputs_are_rejected(problem, mutate, message):
    with pytest.raises(DataError, match=message):
        fast_task("fov-linear").run(*mutate(*problem), progress=False, class_names=COMPARTMENTS)


def test_bad_seed_or_device_is_a_config_error(problem):
    with pytest.raises(ConfigError, match="seed"):
        fast_task("fov-linear").run(*problem, seed=-1, progress=False)
    with pytest.raises(ConfigError, match="device"):
        fast_task("fov-linear").run(*problem, device="nonsense", progress=False)


@pytest.mark.parametrize("p", [0.5, 0.25, 0.1, 0.3])
def test_dropout_masks_keep_the_right_fraction(p):
    import torch

    dtype, bits, threshold, scale = probe_training._dropout_bits(p)
    assert bits == (8 if p in (0.5, 0.25) else 16)
    words = torch.empty(200_000, dtype=torch.int64).random_(-(2**63), None, generator=torch.Generator().manual_seed(0))
    kept = (words.view(dtype) >= threshold).double().mean().item()
    assert kept == pytest.approx(1 - p, abs=3e-3)
    assert scale == pytest.approx(1 / (1 - p), rel=1e-4)


def test_progress_without_a_terminal_prints_a_line_per_fold(problem, capsys):
    from ocbench.tasks.context import Progress

    fast_task("fov-linear", "epochs=2").run(*problem, progress=Progress(True, prefix="cell 3/8 · demo-bb"))
    lines = [line for line in capsys.readouterr().err.splitlines() if "fold" in line]
    assert len(lines) == 5  # pytest's stderr is not a terminal: one line per finished fold
    assert lines[0].startswith("cell 3/8 · demo-bb · fov-linear fold 1/5 done: val macro-F1 ")
