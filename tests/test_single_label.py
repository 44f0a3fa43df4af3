"""Single-label datasets (card ``label_mode: single``) end to end: the probes train with softmax
cross-entropy and predict the argmax class, the k-NN votes by weighted argmax, scores are
scikit-learn's macro-F1 over the argmax labels, chance references use the majority class, and a
lab's table runs ``run``, ``compare`` and ``leaderboard build`` with no code (a multi-label table
with one file per channel too). Real labels score high, the same images with shuffled labels near
chance."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import f1_score
from table_data import CLASSES, write_channel_table, write_tiff_table

import ocbench.tasks.fov_probe as fov_probe
import ocbench.tasks.probe_training as probe_training
from ocbench.cli import cli
from ocbench.errors import ConfigError, DataError
from ocbench.tasks import get_task
from ocbench.tasks.metrics import multilabel_scores
from ocbench.tasks.sc_knn import knn_predict

N_CLASSES = 5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny problems gain nothing from threads, and on a busy shared machine they stall."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def one_hot(classes: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    return np.eye(n_classes, dtype=np.uint8)[classes]


def separable_single_label(seed: int = 0, n: int = 250, dim: int = 16):
    """Each class owns one direction of feature space; one class per row."""
    rng = np.random.default_rng(seed)
    classes = np.arange(n) % N_CLASSES
    basis = np.linalg.qr(rng.standard_normal((dim, N_CLASSES)))[0].T
    features = (3.0 * basis[classes] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)
    order = rng.permutation(n)
    return features, one_hot(classes), order[:50], np.array_split(order[50:], 5)


# -- scores ------------------------------------------------------------------------------------
def test_macro_f1_of_one_hot_rows_is_scikit_learn_macro_f1_of_the_argmax_labels():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, N_CLASSES, 120)
    pred = np.where(rng.random(120) < 0.6, truth, rng.integers(0, N_CLASSES, 120))
    scores = multilabel_scores(one_hot(truth), one_hot(pred))
    assert scores["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro"), abs=1e-12)
    np.testing.assert_allclose(scores["f1"], f1_score(truth, pred, average=None), atol=1e-12)
    # a class absent from the evaluated items is left out of the mean, as for multi-label data
    truth[truth == 4] = 0
    present = sorted(set(truth))
    scores = multilabel_scores(one_hot(truth), one_hot(pred))
    assert scores["macro_f1"] == pytest.approx(f1_score(truth, pred, labels=present, average="macro"), abs=1e-12)


def test_single_label_data_needs_one_class_per_row():
    features, labels, test, folds = separable_single_label()
    two = labels.copy()
    two[7, (np.argmax(two[7]) + 1) % N_CLASSES] = 1
    task, _ = get_task("fov-linear").with_overrides(["epochs=1"])
    with pytest.raises(DataError, match="exactly one class per item; item 7 has 2"):
        task.run(features, two, test, folds, progress=False, label_mode="single")
    with pytest.raises(DataError, match="exactly one class per item"):
        knn_predict(features, two, ks=(3,), label_mode="single")
    with pytest.raises(ConfigError, match="label_mode must be one of"):
        knn_predict(features, labels, ks=(3,), label_mode="multiclass")


# -- k-NN ------------------------------------------------------------------------------------
def weighted_argmax_reference(features, classes, k, temperature, groups=None):
    """DINO's k-NN classifier rule written directly: cosine similarity, the k nearest other items
    (other groups when ``groups`` is given), weights exp(sim / T) summed per class, the argmax."""
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    if groups is not None:
        sims[groups[:, None] == groups[None, :]] = -np.inf
    out = np.empty(len(x), dtype=np.int64)
    for i in range(len(x)):
        nearest = np.argsort(-sims[i], kind="stable")[:k]
        nearest = nearest[np.isfinite(sims[i, nearest])]
        sums = np.bincount(classes[nearest], weights=np.exp(sims[i, nearest] / temperature), minlength=N_CLASSES)
        out[i] = np.argmax(sums)
    return out


@pytest.mark.parametrize("exclude", ["self", "fov"])
def test_single_label_knn_vote_is_the_weighted_argmax(exclude):
    rng = np.random.default_rng(5)
    classes = rng.integers(0, N_CLASSES, 90)
    features = (rng.standard_normal((90, 12)) + 0.8 * np.eye(12)[classes]).astype(np.float32)
    groups = np.arange(90) // 3 if exclude == "fov" else None
    ks = (1, 4, 9, 30)
    out = knn_predict(features, one_hot(classes), ks=ks, temperature=0.07, exclude=exclude, groups=groups,
                      chunk_rows=17, label_mode="single")
    for k in ks:
        predicted = out.predictions[k]
        assert (predicted.sum(axis=1) == 1).all()
        expected = weighted_argmax_reference(features, classes, k, 0.07, groups)
        np.testing.assert_array_equal(predicted.argmax(axis=1), expected)
    # the vote is not the per-class threshold: at k=30 some query's winning class has under half the weight
    multi = knn_predict(features, one_hot(classes), ks=(30,), temperature=0.07, exclude=exclude, groups=groups)
    assert (multi.predictions[30].sum(axis=1) != 1).any()


def test_a_query_without_candidates_gets_no_class():
    features, labels, _, _ = separable_single_label(n=20)
    groups = np.where(np.arange(20) < 19, 0, 1)  # one item alone in its FOV, the others all in one
    out = knn_predict(features, labels, ks=(3,), exclude="fov", groups=groups, label_mode="single")
    assert (out.predictions[3][:19].sum(axis=1) == 1).all()  # their candidate is the lone item
    assert (out.predictions[3][:19].argmax(axis=1) == labels[19].argmax()).all()
    assert out.predictions[3][19].sum() == 1  # the lone item has 19 candidates
    alone = knn_predict(features, labels, ks=(3,), exclude="fov", groups=np.zeros(20), label_mode="single")
    assert alone.predictions[3].sum() == 0 and (alone.n_candidates == 0).all()


def test_sc_knn_scores_single_label_cells_with_majority_class_reference():
    features, labels, _, _ = separable_single_label(n=120)
    task, _ = get_task("sc-knn").with_overrides(["ks=1,10", "main_k=10"])
    result = task.run(features, labels, None, class_names=CLASSES, references=True, label_mode="single")
    assert result.scores["loo"]["macro_f1"]["mean"] > 0.9
    assert (result.predictions.y_pred.sum(axis=-1) == 1).all()
    references = {r["name"]: r["scores"]["loo"]["macro_f1"]["mean"] for r in result.references}
    assert set(references) == {"majority-class", "class-prior", "shuffled-labels"}
    assert max(references.values()) < 0.45


# -- probes ----------------------------------------------------------------------------------
FAST = {"fov-mlp": ["epochs=15", "batch_size=32", "lr=0.02"], "fov-linear": ["epochs=15", "batch_size=32", "lr=0.2"]}


@pytest.mark.parametrize("name", ["fov-mlp", "fov-linear"])
def test_softmax_probe_learns_separable_classes_and_shuffled_labels_do_not(name, monkeypatch):
    features, labels, test, folds = separable_single_label()
    predicted = []
    real_predict = fov_probe._predict

    def spy_predict(*args):
        out = real_predict(*args)
        predicted.append(out)
        return out

    monkeypatch.setattr(fov_probe, "_predict", spy_predict)
    task, _ = get_task(name).with_overrides(FAST[name])
    result = task.run(features, labels, test, folds, seed=0, progress=False, class_names=CLASSES,
                      references=True, label_mode="single")
    assert result.scores["val"]["macro_f1"]["mean"] > 0.9 and result.scores["test"]["macro_f1"]["mean"] > 0.9
    assert (result.predictions.y_pred.sum(axis=-1) == 1).all()  # one class per item: the argmax
    for k in range(5):  # fold k's model: validation, then test predictions
        for part, rows, pred in (("val", folds[k], predicted[2 * k]), ("test", test, predicted[2 * k + 1])):
            expected = f1_score(labels[rows].argmax(1), pred.argmax(1), average="macro")
            assert result.scores[part]["macro_f1"]["values"][k] == pytest.approx(expected, abs=1e-12)
    references = {r["name"]: r["scores"]["val"]["macro_f1"]["mean"] for r in result.references}
    assert set(references) == {"majority-class", "class-prior", "shuffled-labels"}
    assert references["shuffled-labels"] < 0.45 and references["majority-class"] < 0.1


def test_stacked_folds_and_batched_matmuls_give_the_same_single_label_numbers(monkeypatch):
    """The GPU's path (all folds in one model, batched matmuls), run on the CPU."""
    features, labels, test, folds = separable_single_label()
    task, _ = get_task("fov-mlp").with_overrides(["epochs=3", "batch_size=32", "lr=0.02"])
    one_at_a_time = task.run(features, labels, test, folds, seed=1, progress=False, label_mode="single")
    monkeypatch.setattr(probe_training, "_matmul_per_fold", lambda dev: False)
    stacked = task.run(features, labels, test, folds, seed=1, progress=False, label_mode="single", max_parallel_folds=5)
    assert stacked.details["fold_groups"] == [[0, 1, 2, 3, 4]]
    np.testing.assert_allclose(stacked.details["final_train_loss"], one_at_a_time.details["final_train_loss"], rtol=1e-4)


def test_cross_entropy_backward_matches_autograd():
    """One full-batch step without dropout: the hand-written single-label update equals
    torch.nn's cross-entropy + AdamW on the same batch."""
    import torch

    features, labels, _, folds = separable_single_label()
    train = np.concatenate(folds[1:])
    task, _ = get_task("fov-mlp").with_overrides(
        ["epochs=1", f"batch_size={train.size}", "hidden_dims=32,16", "dropout=0", "resample=false", "standardize=false", "lr=0.01"])
    plan = probe_training._FoldPlan(0, train, folds[0], None, fov_probe._identity_standardizer(16), seed=4, steps_per_epoch=1)

    class NoBar:
        def update(self, n):
            pass

        def set_postfix(self, **kw):
            pass

    params, losses = probe_training._train_group(task, [plan], features, labels.astype(np.float32), torch.device("cpu"),
                                                 NoBar(), single=True)
    gen = torch.Generator().manual_seed(plan.seed)
    layers = []
    for d_in, d_out in zip([16, 32, 16], [32, 16, N_CLASSES]):
        w = torch.empty(d_in, d_out).uniform_(-(d_in**-0.5), d_in**-0.5, generator=gen)
        b = torch.empty(1, d_out).uniform_(-(d_in**-0.5), d_in**-0.5, generator=gen)
        layers.append((w.requires_grad_(), b.requires_grad_()))
    x = torch.from_numpy(features[train])
    target = torch.from_numpy(labels[train].argmax(1))
    opt = torch.optim.AdamW([t for pair in layers for t in pair], lr=task.effective_lr, betas=task.betas,
                            weight_decay=task.weight_decay)
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = torch.relu(h)
    loss = torch.nn.functional.cross_entropy(h, target)
    loss.backward()
    opt.step()
    assert losses[0] == pytest.approx(float(loss.detach()), rel=1e-5)
    tolerance = dict(rtol=0.0, atol=1e-3 * task.effective_lr)
    for (w, b), (w_ref, b_ref) in zip(params, layers):
        torch.testing.assert_close(w[0], w_ref.detach(), **tolerance)
        torch.testing.assert_close(b[0], b_ref.detach(), **tolerance)


# -- cards, segmentation, compare ------------------------------------------------------------
def test_tables_segment_with_the_classical_backend_and_opencell_with_cellpose(tmp_path):
    from ocbench.data.cards import DEMO, OPENCELL, dataset_card_for

    table = write_tiff_table(tmp_path, per_class=3, size=16)
    task = get_task("sc-knn")
    assert task.backend_for(dataset_card_for(table)).name == "classical"
    assert task.backend_for(DEMO).name == "classical" and task.backend_for(OPENCELL).name == "cellpose"
    table.with_name("my_images.dataset.json").write_text(json.dumps({"segmentation": "cellpose"}))
    assert task.backend_for(dataset_card_for(table)).name == "cellpose"  # a lab with Cellpose asks for it
    assert get_task("sc-knn").with_overrides(["segmentation=classical"])[0].backend_for(OPENCELL).name == "classical"


def test_a_task_states_its_label_modes_and_refuses_the_others_in_one_line(tmp_path):
    table = write_tiff_table(tmp_path, per_class=3, size=16)
    runner = CliRunner()
    listed = runner.invoke(cli, ["tasks", "list"])
    rows = {line.split()[0]: line for line in listed.output.splitlines()[2:]}
    assert "multilabel, single" in rows["fov-mlp"] and "multilabel, single" in rows["sc-knn"]
    assert "multilabel" in rows["finetune"] and "single" not in rows["finetune"]
    refused = runner.invoke(cli, ["run", "--backbone", "tiny-vit-random", "--channels", "replicate", "--dataset", str(table),
                                  "--task", "finetune", "--output", str(tmp_path / "entries")])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert refused.output.strip().splitlines() == [
        "error: task finetune scores multilabel labels; dataset 'local:my_images' is single (label_mode in its card): "
        "pick a task that scores it (`ocbench tasks list`)"]
    assert not (tmp_path / "entries").exists()


def test_compare_refuses_entries_of_two_label_modes(tmp_path):
    from ocbench.benchmark.entry import write_entry
    from board_examples import example_entry_dict

    multi = example_entry_dict("model-a")
    single = example_entry_dict("model-b")
    single["dataset"]["label_mode"] = "single"
    a, b = write_entry(multi, tmp_path / "a"), write_entry(single, tmp_path / "b")
    result = CliRunner().invoke(cli, ["compare", str(a), str(b)])
    assert result.exit_code == 2 and "different label mode (multilabel vs single)" in result.output


# -- a lab's tables end to end ----------------------------------------------------------------
RUN = ["--backbone", "classical-stats", "--threads", "1"]
#: Fewer, larger probe steps than the protocol's 300 epochs at lr 1e-4: the test needs the signal, fast.
PROBE_SETTINGS = ["--set", "epochs=40", "--set", "lr=0.003"]


def shuffle_labels(table, delimiter: str = ",") -> None:
    """Deal the table's labels to its rows at random (images and groups stay)."""
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=delimiter))
    labels = [row["label"] for row in rows]
    for row, j in zip(rows, np.random.default_rng(1).permutation(len(rows))):
        row["label"] = labels[j]
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


def run_tables(tmp_path, tables: dict, channels: str) -> dict:
    """``ocbench run`` of the FOV probes and sc-knn on each table; the entries by (table, task)."""
    runner = CliRunner()
    entries = {}
    for kind, table in tables.items():
        out = tmp_path / f"entries-{kind}"
        base = ["run", *RUN, "--dataset", str(table), "--channels", channels, "--output", str(out)]
        for tasks, settings in (("fov-mlp,fov-linear", PROBE_SETTINGS), ("sc-knn", [])):
            result = runner.invoke(cli, [*base, "--task", tasks, *settings])
            assert result.exit_code == 0, result.output
        for task in ("fov-mlp", "fov-linear", "sc-knn"):
            (path,) = out.glob(f"classical-stats__*__{task}__paper.json")
            entries[kind, task] = (path, json.loads(path.read_text()))
    return entries


def best_chance(entry: dict) -> float:
    eval_set = entry["main_score"]["eval_set"]
    return max(r["scores"][eval_set]["macro_f1"]["mean"] for r in entry["references"])


def check_signal(entries: dict) -> None:
    def main(entry: dict) -> float:
        return entry["scores"][entry["main_score"]["eval_set"]]["macro_f1"]["mean"]

    numbers = {task: (main(entries["real", task][1]), main(entries["shuffled", task][1]), best_chance(entries["real", task][1]))
               for task in ("fov-mlp", "fov-linear", "sc-knn")}
    print("real, shuffled, best chance:", numbers)
    for task in numbers:
        real, shuffled = entries["real", task][1], entries["shuffled", task][1]
        assert main(real) > 0.8 and main(real) > best_chance(real) + 0.2, (task, numbers[task])
        # shuffled labels: no better than what the labels alone give, within noise
        assert main(shuffled) < best_chance(shuffled) + 0.15, (task, main(shuffled), best_chance(shuffled))


def compare_and_build_board(tmp_path, entries: dict, table, channels: str) -> str:
    runner = CliRunner()
    real = tmp_path / "entries-real"
    # a second system on the same items: the classical features of the wrong channel as "protein"
    other = runner.invoke(cli, ["run", *RUN, "--dataset", str(table), "--channels", channels.replace("protein=protein", "membrane=protein"),
                                "--task", "fov-mlp", *PROBE_SETTINGS, "--output", str(real)])
    assert other.exit_code == 0, other.output
    first = entries["real", "fov-mlp"][0]
    (second,) = [p for p in real.glob("classical-stats__*__fov-mlp__paper.json") if p != first]
    compared = runner.invoke(cli, ["compare", str(first), str(second)])
    assert compared.exit_code == 0 and "paired" in compared.output.lower(), compared.output
    built = runner.invoke(cli, ["leaderboard", "build", str(real), str(tmp_path / "entries-shuffled"),
                                "--out", str(tmp_path / "board")])
    assert built.exit_code == 0, built.output
    assert list((tmp_path / "board").glob("**/*.png")), "the board draws its plots"
    return (tmp_path / "board" / "LEADERBOARD.md").read_text()


@pytest.mark.slow
def test_a_single_label_table_runs_compares_and_builds_a_board_with_no_code(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    tables = {}
    for kind in ("real", "shuffled"):
        table = write_tiff_table(tmp_path / kind, per_class=40, size=32, groups=8)
        if kind == "shuffled":
            shuffle_labels(table)
        table.with_name("my_images.dataset.json").write_text(json.dumps(
            {"name": f"lab-{kind}", "channel_names": ["nucleus", "protein", "membrane"], "cell_diameter_px": 12}))
        tables[kind] = table
    channels = "protein=protein,nucleus=nucleus"
    entries = run_tables(tmp_path, tables, channels)
    for (kind, task), (_, entry) in entries.items():
        assert entry["dataset"]["label_mode"] == "single" and entry["dataset"]["name"] == f"lab-{kind}"
        assert {r["name"] for r in entry["references"]} == {"majority-class", "class-prior", "shuffled-labels"}
    assert entries["real", "fov-mlp"][1]["dataset"]["n_items"] == 200
    check_signal(entries)
    board = compare_and_build_board(tmp_path, entries, tables["real"], channels)
    assert "lab-real" in board and "lab-shuffled" in board and "single-label" in board


@pytest.mark.slow
def test_a_multilabel_table_with_a_file_per_channel_does_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("OCBENCH_CACHE", str(tmp_path / "cache"))
    tables = {}
    for kind in ("real", "shuffled"):
        table = write_channel_table(tmp_path / kind, per_class=40, size=32, channels=("nucleus", "protein", "membrane"),
                                    groups=8)
        if kind == "shuffled":
            shuffle_labels(table, delimiter="\t")
        table.with_name("cells.dataset.json").write_text(json.dumps({"name": f"screen-{kind}", "cell_diameter_px": 12}))
        tables[kind] = table
    channels = "protein=protein,nucleus=nucleus"
    entries = run_tables(tmp_path, tables, channels)
    for (kind, task), (_, entry) in entries.items():
        assert entry["dataset"]["label_mode"] == "multilabel" and entry["dataset"]["card"]["channel_names"] == [
            "nucleus", "protein", "membrane"]
        assert {r["name"] for r in entry["references"]} == {"all-positive", "class-prior", "shuffled-labels"}
    check_signal(entries)
    board = compare_and_build_board(tmp_path, entries, tables["real"], channels)
    assert "screen-real" in board and "screen-shuffled" in board and "single-label" not in board
