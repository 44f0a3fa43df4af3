"""sc-knn: the leave-one-out soft-vote k-NN against a brute-force reference written here."""

import math

import numpy as np
import pytest

from ocbench.errors import ConfigError, DataError
from ocbench.tasks.sc_knn import EVAL_SET, ScKnn, ScKnnFov, knn_chunk_rows, knn_predict

CLASSES = ("a", "b", "c", "d")


def reference(features, labels, groups, k, *, temperature, threshold, normalization, exclude):
    """Plain loops: cosine similarity to every allowed candidate, sort, top k, weighted vote."""
    x = np.asarray(features, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n, c = labels.shape
    preds = np.zeros((n, c), np.uint8)
    scores = np.zeros((n, c))
    for i in range(n):
        candidates = [j for j in range(n) if j != i and (exclude == "self" or groups[j] != groups[i])]
        sims = sorted(((float(x[i] @ x[j]), j) for j in candidates), reverse=True)[:k]
        if not sims:
            continue
        weights = np.array([math.exp(s / temperature) for s, _ in sims])
        vote = sum(w * labels[j] for w, (_, j) in zip(weights, sims))
        denom = weights.sum() if normalization == "weight-sum" else vote.max()
        score = vote / denom if denom > 0 else np.zeros(c)
        scores[i] = score
        preds[i] = score >= threshold
    return preds, scores


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(7)
    n = 23
    features = rng.normal(size=(n, 6)).astype(np.float32)
    labels = (rng.random((n, len(CLASSES))) < 0.35).astype(np.uint8)
    groups = np.array([f"fov{i // 4}" for i in range(n)])
    return features, labels, groups


@pytest.mark.parametrize("exclude", ["self", "fov"])
@pytest.mark.parametrize("normalization", ["weight-sum", "max"])
@pytest.mark.parametrize("temperature", [0.07, 1.0])
def test_predictions_equal_brute_force(small, exclude, normalization, temperature):
    features, labels, groups = small
    ks = (1, 2, 5, 9, 30)  # 30 > candidates: every candidate votes
    out = knn_predict(features, labels, ks=ks, temperature=temperature, normalization=normalization,
                      exclude=exclude, groups=groups, chunk_rows=5, return_scores=True)
    for k in ks:
        preds, scores = reference(features, labels, groups, k, temperature=temperature, threshold=0.5,
                                  normalization=normalization, exclude=exclude)
        np.testing.assert_allclose(out.scores[k], scores, atol=2e-5)  # float32 similarities
        np.testing.assert_array_equal(out.predictions[k], preds)


def test_k1_copies_the_nearest_neighbours_labels(small):
    features, labels, groups = small
    out = knn_predict(features, labels, ks=(1,), groups=groups)
    nearest = out.neighbours[:, 0]
    np.testing.assert_array_equal(out.predictions[1], labels[nearest])
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(nearest, sims.argmax(axis=1))


def _three_points():
    # Query 0 with two neighbours at cosine 0.9 (class a) and 0.8 (class b).
    features = np.array([[1.0, 0.0, 0.0], [0.9, math.sqrt(1 - 0.81), 0.0], [0.8, 0.0, 0.6]], np.float32)
    labels = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]], np.uint8)
    return features, labels


@pytest.mark.parametrize("temperature", [0.07, 0.5, 5.0])
def test_temperature_and_weight_sum_normalization(temperature):
    features, labels = _three_points()
    out = knn_predict(features, labels, ks=(2,), temperature=temperature, return_scores=True)
    # weights exp(0.9/T) and exp(0.8/T): the scores are the weighted fractions.
    share_a = 1.0 / (1.0 + math.exp(-0.1 / temperature))
    np.testing.assert_allclose(out.scores[2][0], [share_a, 1 - share_a, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(out.predictions[2][0], [1, 0, 0, 0])  # a weighted majority for a only


@pytest.mark.parametrize("temperature, b_predicted", [(0.07, False), (1.0, True)])
def test_max_normalization_scales_by_the_top_class(temperature, b_predicted):
    features, labels = _three_points()
    out = knn_predict(features, labels, ks=(2,), temperature=temperature, normalization="max", return_scores=True)
    ratio = math.exp(-0.1 / temperature)  # b's weight relative to a's
    np.testing.assert_allclose(out.scores[2][0], [1.0, ratio, 0, 0], atol=1e-6)
    assert out.predictions[2][0].tolist() == [1, int(b_predicted), 0, 0]


def test_exact_half_is_positive():
    # Two neighbours at the same similarity, one with the class: score exactly 0.5 -> positive.
    features = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], np.float32)
    labels = np.array([[0, 0], [1, 0], [0, 1]], np.uint8)
    out = knn_predict(features, labels, ks=(2,), return_scores=True)
    np.testing.assert_allclose(out.scores[2][0], [0.5, 0.5], atol=1e-6)
    assert out.predictions[2][0].tolist() == [1, 1]


def test_fov_track_never_returns_a_same_fov_neighbour():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(8), 5)
    # Cells of one FOV are near-duplicates: without the exclusion they are each other's neighbours.
    centres = rng.normal(size=(8, 16))
    features = (centres[groups] + 0.01 * rng.normal(size=(40, 16))).astype(np.float32)
    labels = np.eye(4, dtype=np.uint8)[groups % 4]
    same = knn_predict(features, labels, ks=(4,), exclude="self")
    assert (groups[same.neighbours] == groups[:, None]).all()
    out = knn_predict(features, labels, ks=(1, 4, 35, 50), exclude="fov", groups=groups, chunk_rows=3)
    valid = out.neighbours >= 0
    assert valid[:, :35].all() and not valid[:, 35:].any()  # 35 cells in other FOVs
    assert not (groups[out.neighbours[valid]] == np.broadcast_to(groups[:, None], valid.shape)[valid]).any()
    assert (out.n_candidates == 35).all()


@pytest.mark.parametrize("exclude", ["self", "fov"])
def test_blocked_equals_unblocked(small, exclude):
    features, labels, groups = small
    whole = knn_predict(features, labels, ks=(1, 3, 7), exclude=exclude, groups=groups, chunk_rows=len(features))
    for rows in (1, 2, 7):
        part = knn_predict(features, labels, ks=(1, 3, 7), exclude=exclude, groups=groups, chunk_rows=rows)
        for k in (1, 3, 7):
            np.testing.assert_array_equal(part.predictions[k], whole.predictions[k])
        np.testing.assert_array_equal(part.neighbours, whole.neighbours)
        # BLAS may sum a product of another shape in another order: the last bit can differ.
        np.testing.assert_allclose(part.similarities, whole.similarities, rtol=0, atol=1e-6)


def test_chunk_rows_follow_the_memory_budget():
    assert knn_chunk_rows(157_504, 256 << 20) == (256 << 20) // (4 * 157_504)
    assert knn_chunk_rows(10, 1 << 30) == 10
    assert knn_chunk_rows(10**9, 1) == 1


def test_bad_inputs_are_one_line_errors(small):
    features, labels, groups = small
    with pytest.raises(ConfigError, match="needs the group"):
        knn_predict(features, labels, exclude="fov")
    with pytest.raises(DataError, match="NaN"):
        knn_predict(np.full((3, 2), np.nan), labels[:3])
    with pytest.raises(DataError, match="at least 2"):
        knn_predict(features[:1], labels[:1])
    with pytest.raises(ConfigError, match="main_k"):
        ScKnn(ks=(1, 5), main_k=50)
    with pytest.raises(ConfigError, match="normalization"):
        ScKnn(normalization="softmax")
    with pytest.raises(ConfigError, match="exclude"):
        ScKnn().with_overrides(["exclude=protein"])


def test_task_run_gives_the_k_axis_in_entry_shape(small):
    features, labels, groups = small
    task, _ = ScKnn().with_overrides(["ks=1,3,9", "main_k=3"])
    result = task.run(features, labels, groups, class_names=CLASSES)
    assert result.axis["name"] == "k" and result.axis["main"] == 3
    assert [p["value"] for p in result.axis["points"]] == [1, 3, 9]
    main = next(p for p in result.axis["points"] if p["value"] == 3)
    assert main["scores"] == result.scores
    assert result.scores[EVAL_SET]["macro_f1"]["n"] == 1
    assert len(result.per_class_values[EVAL_SET]["f1"][0]) == len(CLASSES)
    preds, _ = reference(features, labels, groups, 3, temperature=0.07, threshold=0.5, normalization="weight-sum", exclude="self")
    from ocbench.tasks.metrics import multilabel_scores

    assert result.scores[EVAL_SET]["macro_f1"]["mean"] == pytest.approx(multilabel_scores(labels, preds)["macro_f1"])
    assert result.config["normalization"] == "weight-sum" and result.config["temperature"] == 0.07
    # per-item predictions per k are kept, grouped by FOV when no protein is given
    kept = result.predictions
    assert kept.axis_values == (1.0, 3.0, 9.0) and kept.y_pred.shape == (3, 1, *labels.shape)
    assert np.array_equal(kept.at(3)[0], preds) and kept.group_name == "FOV"
    assert list(kept.groups) == [str(g) for g in groups]


def test_fov_task_is_its_own_on_protocol_task():
    task = ScKnnFov()
    assert task.exclude == "fov" and task.name == "sc-knn-fov"
    assert task.protocol_deviations() == {}
    assert ScKnn().exclude == "self"


def test_callers_features_are_never_written_and_both_paths_agree(small):
    features, labels, groups = small
    mine = features.copy()
    shared = knn_predict(mine, labels, ks=(1, 5), groups=groups, exclude="fov", chunk_rows=4)
    np.testing.assert_array_equal(mine, features)
    copied = knn_predict(features.astype(np.float64), labels, ks=(1, 5), groups=groups, exclude="fov", chunk_rows=4)
    for k in (1, 5):
        np.testing.assert_array_equal(shared.predictions[k], copied.predictions[k])
    np.testing.assert_array_equal(shared.neighbours, copied.neighbours)


def test_gpu_gives_the_cpu_predictions(small):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    features, labels, groups = small
    cpu = knn_predict(features, labels, ks=(1, 5, 9), groups=groups, exclude="fov")
    gpu = knn_predict(features, labels, ks=(1, 5, 9), groups=groups, exclude="fov", device="cuda")
    for k in (1, 5, 9):
        np.testing.assert_array_equal(cpu.predictions[k], gpu.predictions[k])
    np.testing.assert_array_equal(cpu.neighbours, gpu.neighbours)
