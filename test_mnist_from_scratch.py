"""Every claim mnist_from_scratch.py makes, checked: one test per claim.

Run:  python -m unittest -v test_mnist_from_scratch

The tests that need the real MNIST read it from data/ (run `python mnist_from_scratch.py
download` once, or copy the four .gz files there). No test uses the network.
"""
import contextlib
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

import mnist_from_scratch as mnist

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "mnist_from_scratch.py")
DATA_DIR = os.path.join(HERE, "data")
HAVE_MNIST = all(os.path.exists(os.path.join(DATA_DIR, name + ".gz")) or
                 os.path.exists(os.path.join(DATA_DIR, name)) for name in mnist.MNIST_FILES)
needs_mnist = unittest.skipUnless(HAVE_MNIST, "MNIST is not in data/ (run the download command)")

_MNIST = None


def real_mnist():
    """The real MNIST, loaded once for all the tests that need it."""
    global _MNIST
    if _MNIST is None:
        _MNIST = mnist.load_mnist(DATA_DIR, download=False)
    return _MNIST


def run_cli(*args, cwd=None):
    """Run the script as a user would; return (exit status, stdout, stderr)."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    run = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                         cwd=cwd or HERE, env=env, timeout=300)
    return run.returncode, run.stdout, run.stderr


def idx_bytes(array, type_code):
    """An IDX file's bytes for an array, written independently of the loader under test."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        struct.pack(">I", n) for n in array.shape)
    return header + array.astype(dtype[type_code]).tobytes()


class TestLoadingTheData(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_idx_round_trip_for_every_type_code_gz_and_raw(self):
        rng = np.random.default_rng(0)
        cases = {0x08: rng.integers(0, 256, (3, 4, 5)), 0x09: rng.integers(-128, 128, (7,)),
                 0x0B: rng.integers(-30000, 30000, (2, 3)), 0x0C: rng.integers(-2**31, 2**31, (4, 2)),
                 0x0D: rng.normal(size=(2, 2, 2, 2)), 0x0E: rng.normal(size=(5, 1))}
        for code, array in cases.items():
            for suffix in ("", ".gz"):
                path = self.path(f"t{code}{suffix}")
                opener = gzip.open if suffix else open
                with opener(path, "wb") as f:
                    f.write(idx_bytes(array, code))
                loaded = mnist.load_idx(path)
                self.assertEqual(loaded.shape, array.shape)
                expected = array.astype(np.float32) if code == 0x0D else array
                np.testing.assert_array_equal(loaded, expected)

    def test_truncated_idx_file_is_refused_naming_the_file(self):
        path = self.path("cut")
        with open(path, "wb") as f:
            f.write(idx_bytes(np.zeros((10, 28, 28)), 0x08)[:-5])
        with self.assertRaisesRegex(ValueError, "cut.*truncated"):
            mnist.load_idx(path)

    def test_wrong_magic_number_is_refused(self):
        path = self.path("magic")
        with open(path, "wb") as f:
            f.write(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
        with self.assertRaisesRegex(ValueError, "not an IDX file"):
            mnist.load_idx(path)
        with open(path, "wb") as f:
            f.write(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
        with self.assertRaisesRegex(ValueError, "type code 0x07"):
            mnist.load_idx(path)

    def test_cut_off_gzip_is_refused(self):
        path = self.path("x.gz")
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
            f.write(idx_bytes(np.random.default_rng(0).integers(0, 256, (100, 28, 28)), 0x08))
        with open(path, "wb") as f:
            f.write(buffer.getvalue()[:200])
        with self.assertRaisesRegex(ValueError, "x.gz"):
            mnist.load_idx(path)

    def test_image_and_label_count_mismatch_is_refused(self):
        with self.assertRaisesRegex(ValueError, "5 images but 4 labels"):
            mnist.images_and_labels(np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8), "f")

    def test_pixels_become_float32_between_0_and_1(self):
        images = np.array([[[0] * 28] * 27 + [[255] * 28]], np.uint8)
        X, y = mnist.images_and_labels(images, np.array([3], np.uint8), "f")
        self.assertEqual((X.dtype, X.shape), (np.float32, (1, 784)))
        self.assertEqual((X.min(), X.max()), (0.0, 1.0))
        np.testing.assert_array_equal(X[0, -28:], 1.0)

    def test_kaggle_csv_with_header_and_unlabelled_test_file(self):
        header = "label," + ",".join(f"pixel{i}" for i in range(784))
        rows = [f"{d}," + ",".join(str((d * 7 + i) % 256) for i in range(784)) for d in (3, 9)]
        with open(self.path("train.csv"), "w") as f:
            f.write("\n".join([header] + rows) + "\n")
        with open(self.path("test.csv"), "w") as f:
            f.write(",".join(f"pixel{i}" for i in range(784)) + "\n" + ",".join(["255"] * 784))
        X, y = mnist.load_csv(self.path("train.csv"))
        self.assertEqual(X.shape, (2, 784))
        self.assertEqual(y.tolist(), [3, 9])
        self.assertEqual(int(X[1, 2]), (9 * 7 + 2) % 256)
        X_test, y_test = mnist.load_csv(self.path("test.csv"))
        self.assertEqual((X_test.shape, y_test), ((1, 784), None))
        # load_mnist falls back to the CSV files when there are no IDX files
        X_train, y_train, X_test, y_test = mnist.load_mnist(self.tmp.name, download=False)
        self.assertEqual((X_train.dtype, X_train.shape, y_test), (np.float32, (2, 784), None))
        self.assertAlmostEqual(float(X_test.max()), 1.0)

    def test_headerless_csv_with_label_first(self):
        with open(self.path("mnist_train.csv"), "w") as f:
            f.write("7," + ",".join(["0"] * 783 + ["128"]) + "\n")
        X, y = mnist.load_csv(self.path("mnist_train.csv"))
        self.assertEqual((X.shape, y.tolist(), int(X[0, -1])), ((1, 784), [7], 128))

    def test_csv_with_wrong_column_count_or_values_is_refused(self):
        with open(self.path("bad.csv"), "w") as f:
            f.write("1," + ",".join(["0"] * 100) + "\n")
        with self.assertRaisesRegex(ValueError, "101 columns"):
            mnist.load_csv(self.path("bad.csv"))
        with open(self.path("big.csv"), "w") as f:
            f.write("1," + ",".join(["300"] * 784) + "\n")
        with self.assertRaisesRegex(ValueError, "0..255"):
            mnist.load_csv(self.path("big.csv"))

    @needs_mnist
    def test_real_mnist_loads_with_the_right_shapes_and_checksums(self):
        X_train, y_train, X_test, y_test = real_mnist()
        self.assertEqual((X_train.shape, X_test.shape), ((60000, 784), (10000, 784)))
        self.assertEqual((y_train.shape, y_test.shape), ((60000,), (10000,)))
        self.assertEqual(np.bincount(y_test).tolist()[:3], [980, 1135, 1032])  # known counts
        self.assertEqual((X_train.dtype, float(X_train.max())), (np.float32, 1.0))

    def test_file_with_the_wrong_checksum_is_refused(self):
        for stem in mnist.MNIST_FILES:
            shape = (2, 28, 28) if "images" in stem else (2,)
            with open(self.path(stem), "wb") as f:
                f.write(idx_bytes(np.zeros(shape), 0x08))
        with self.assertRaisesRegex(ValueError, "checksum differs"):
            mnist.load_mnist(self.tmp.name, download=False)

    def test_offline_download_fails_fast_with_one_clear_message(self):
        # a port on this machine where nothing listens: the connection is refused at once
        mirrors = ["http://127.0.0.1:9/"]
        with self.assertRaises(mnist.UserError) as caught:
            mnist.download_mnist(self.path("d"), mirrors=mirrors, timeout=2)
        message = str(caught.exception)
        self.assertIn("train-images-idx3-ubyte.gz", message)
        self.assertIn("--data-dir", message)
        self.assertNotIn("\n", message)
        self.assertEqual(os.listdir(self.path("d")), [])  # no half-written file left behind


class TestTheNetwork(unittest.TestCase):

    def test_output_and_activation_shapes_for_several_depths(self):
        X = np.random.default_rng(0).random((5, 784), dtype=np.float32)
        for hidden in [(), (32,), (64, 32), (50, 40, 30)]:
            sizes = [784, *hidden, 10]
            Ws, bs = mnist.init_params(sizes)
            As = mnist.forward(X, Ws, bs)
            self.assertEqual([A.shape for A in As], [(5, n) for n in sizes])
            self.assertEqual(As[-1].dtype, np.float32)
            dWs, dbs = mnist.backward(As, np.arange(5), Ws)
            self.assertEqual([d.shape for d in dWs], [W.shape for W in Ws])
            self.assertEqual([d.shape for d in dbs], [b.shape for b in bs])

    def test_he_initialization_has_the_right_scale(self):
        Ws, _ = mnist.init_params([784, 1000, 10], "relu", seed=1)
        self.assertAlmostEqual(float(Ws[0].std()), np.sqrt(2 / 784), delta=0.001)
        Ws, _ = mnist.init_params([784, 1000, 10], "tanh", seed=1)
        self.assertAlmostEqual(float(Ws[0].std()), np.sqrt(2 / 1784), delta=0.001)

    def test_gradients_match_finite_differences(self):
        for activation in mnist.ACTIVATIONS:
            for dropout in (0.0, 0.3):
                with self.subTest(activation=activation, dropout=dropout):
                    errors = mnist.gradient_check(activation=activation, dropout=dropout)
                    self.assertEqual(len(errors), 6)  # W and b of three layers
                    for name, error in errors:
                        self.assertLess(error, 1e-6, f"{name}: {error}")

    def test_gradient_check_catches_a_wrong_gradient(self):
        wrong = dict(mnist.ACTIVATIONS, relu=(mnist.relu, lambda A: (A > 0) * 1.01))
        original = mnist.ACTIVATIONS
        mnist.ACTIVATIONS = wrong
        try:
            worst = max(e for _, e in mnist.gradient_check())
        finally:
            mnist.ACTIVATIONS = original
        self.assertGreater(worst, 1e-4)

    def test_softmax_is_stable_for_huge_scores(self):
        Z = np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])
        P = mnist.softmax(Z)
        np.testing.assert_allclose(P.sum(axis=1), 1.0)
        np.testing.assert_allclose(P[0], [1.0, 0.0, 0.0])
        self.assertAlmostEqual(mnist.cross_entropy(Z, np.array([2, 0])),
                               (2000.0 + np.log(3)) / 2, places=6)

    def test_cross_entropy_equals_the_textbook_formula(self):
        rng = np.random.default_rng(3)
        Z, y = rng.normal(size=(6, 10)), rng.integers(0, 10, 6)
        P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
        self.assertAlmostEqual(mnist.cross_entropy(Z, y), -np.mean(np.log(P[np.arange(6), y])))

    def test_loss_falls_over_a_few_steps_on_a_small_batch(self):
        rng = np.random.default_rng(0)
        X, y = rng.random((32, 784), dtype=np.float32), rng.integers(0, 10, 32)
        Ws, bs = mnist.init_params([784, 64, 10])
        vWs, vbs = [np.zeros_like(W) for W in Ws], [np.zeros_like(b) for b in bs]
        losses = []
        for _ in range(20):
            As = mnist.forward(X, Ws, bs)
            losses.append(mnist.cross_entropy(As[-1], y))
            dWs, dbs = mnist.backward(As, y, Ws)
            mnist.sgd_step(Ws, dWs, vWs, 0.05, 0.9)
            mnist.sgd_step(bs, dbs, vbs, 0.05, 0.9)
        self.assertLess(losses[-1], 0.5 * losses[0])

    def test_sgd_step_follows_the_momentum_rule_with_weight_decay(self):
        W, g, v = np.array([1.0, -2.0]), np.array([0.5, 0.5]), np.array([0.1, 0.0])
        mnist.sgd_step([W], [g.copy()], [v], lr=0.1, momentum=0.9, weight_decay=0.01)
        v_expected = 0.9 * np.array([0.1, 0.0]) + (np.array([0.5, 0.5]) + 0.01 * np.array([1.0, -2.0]))
        np.testing.assert_allclose(v, v_expected)
        np.testing.assert_allclose(W, np.array([1.0, -2.0]) - 0.1 * v_expected)

    def test_cosine_schedule_goes_from_lr_to_zero(self):
        self.assertEqual(mnist.learning_rate("cosine", 0.1, 0, 100), 0.1)
        self.assertAlmostEqual(mnist.learning_rate("cosine", 0.1, 50, 100), 0.05)
        self.assertAlmostEqual(mnist.learning_rate("cosine", 0.1, 100, 100), 0.0)
        self.assertEqual(mnist.learning_rate("constant", 0.1, 70, 100), 0.1)

    def test_dropout_masks_keep_the_expected_activation(self):
        masks = mnist.dropout_masks([784, 1000, 10], 200, 0.3, np.random.default_rng(0))
        self.assertEqual(len(masks), 1)
        np.testing.assert_allclose(np.unique(masks[0]), [0.0, 1 / 0.7], rtol=1e-6)
        self.assertAlmostEqual(float(masks[0].mean()), 1.0, delta=0.02)

    def test_confusion_matrix_counts_true_rows_and_predicted_columns(self):
        C = mnist.confusion_matrix(np.array([1, 1, 2, 0]), np.array([1, 2, 2, 0]))
        self.assertEqual((C[1, 1], C[1, 2], C[2, 2], C[0, 0], C.sum()), (1, 1, 1, 1, 4))


class TestTraining(unittest.TestCase):

    @needs_mnist
    def test_short_training_on_real_mnist_is_far_above_chance(self):
        X_train, y_train, X_test, y_test = real_mnist()
        Ws, bs, history, interrupted = mnist.train(
            X_train[:6000], y_train[:6000], X_train[-1000:], y_train[-1000:], hidden=(64,),
            epochs=2, batch_size=64, lr=0.05, seed=0)
        result = mnist.evaluate(X_test[:2000], y_test[:2000], Ws, bs)
        self.assertGreater(result["accuracy"], 0.85)  # chance is 0.10
        self.assertEqual([e["epoch"] for e in history], [1, 2])
        self.assertLess(history[1]["train_loss"], history[0]["train_loss"])
        self.assertFalse(interrupted)
        self.assertEqual(result["confusion"].sum(), 2000)

    def test_the_same_seed_gives_the_same_model_bit_for_bit(self):
        rng = np.random.default_rng(0)
        X, y = rng.random((300, 784), dtype=np.float32), rng.integers(0, 10, 300)
        a = mnist.train(X, y, hidden=(16,), epochs=2, batch_size=32, seed=5)
        b = mnist.train(X, y, hidden=(16,), epochs=2, batch_size=32, seed=5)
        c = mnist.train(X, y, hidden=(16,), epochs=2, batch_size=32, seed=6)
        for Wa, Wb in zip(a[0] + a[1], b[0] + b[1]):
            np.testing.assert_array_equal(Wa, Wb)
        self.assertFalse(np.array_equal(a[0][0], c[0][0]))

    def test_best_validation_epoch_is_kept(self):
        rng = np.random.default_rng(0)
        X, y = rng.random((200, 784), dtype=np.float32), rng.integers(0, 10, 200)
        Ws, bs, history, _ = mnist.train(X, y, X[:50], y[:50], hidden=(8,), epochs=4,
                                         batch_size=20, seed=1)
        best = max(e["val_acc"] for e in history)
        self.assertEqual(mnist.evaluate(X[:50], y[:50], Ws, bs)["accuracy"], best)

    def test_exploding_loss_stops_with_a_clear_error(self):
        rng = np.random.default_rng(0)
        X, y = rng.random((256, 784), dtype=np.float32) * 50, rng.integers(0, 10, 256)
        with np.errstate(all="ignore"):
            with self.assertRaisesRegex(FloatingPointError, "learning rate .* too high"):
                mnist.train(X, y, hidden=(32,), epochs=3, lr=1e6, schedule="constant")


class TestSavingAndLoading(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.path = os.path.join(self.tmp.name, "m.npz")

    def test_save_then_load_gives_identical_predictions(self):
        Ws, bs = mnist.init_params([784, 20, 12, 10], seed=3)
        mnist.save_model(self.path, Ws, bs, {"activation": "tanh", "history": []})
        Ws2, bs2, meta = mnist.load_model(self.path)
        X = np.random.default_rng(1).random((7, 784), dtype=np.float32)
        np.testing.assert_array_equal(mnist.predict_proba(X, Ws, bs, "tanh"),
                                      mnist.predict_proba(X, Ws2, bs2, meta["activation"]))
        self.assertEqual(meta["sizes"], [784, 20, 12, 10])
        self.assertEqual(os.listdir(self.tmp.name), ["m.npz"])  # no temporary file left

    def test_npz_holding_a_pickled_object_is_refused(self):
        np.savez(self.path, meta=np.array([{"evil": 1}], dtype=object),
                 W1=np.zeros((784, 10)), b1=np.zeros(10))
        with self.assertRaisesRegex(mnist.UserError, "refused"):
            mnist.load_model(self.path)

    def test_file_that_is_not_a_model_is_refused_with_a_reason(self):
        with open(self.path, "wb") as f:
            f.write(b"hello")
        with self.assertRaisesRegex(mnist.UserError, "not a model file"):
            mnist.load_model(self.path)
        Ws, bs = mnist.init_params([784, 20, 10])
        np.savez(self.path, W1=Ws[0], b1=bs[0], W2=Ws[1][:5], b2=bs[1],
                 meta=np.array(json.dumps({"sizes": [784, 20, 10]})))
        with self.assertRaisesRegex(mnist.UserError, "layer 2"):
            mnist.load_model(self.path)


class TestCommandLine(unittest.TestCase):
    """The script end to end, run as a user runs it."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = os.path.join(cls.tmp.name, "tiny.npz")
        if HAVE_MNIST:
            cls.train_run = run_cli("train", "--data-dir", DATA_DIR, "--model", cls.model,
                                    "--epochs", "1", "--hidden", "32", "--val-size", "1000")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @needs_mnist
    def test_train_logs_each_epoch_and_saves_a_model_with_its_history(self):
        code, out, err = self.train_run
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"epoch +1/1 +train loss \d\.\d+ acc +\d+\.\d+ %  val loss")
        self.assertRegex(out, r"test accuracy 9\d\.\d\d %")
        with np.load(self.model, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
        self.assertEqual(meta["sizes"], [784, 32, 10])
        self.assertEqual(len(meta["history"]), 1)
        entry = meta["history"][0]
        self.assertEqual(set(entry), {"epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                      "seconds"})
        self.assertGreater(entry["seconds"], 0)
        self.assertGreater(meta["test_accuracy"], 0.9)

    @needs_mnist
    def test_evaluate_json_reports_accuracy_loss_and_confusion(self):
        code, out, err = run_cli("evaluate", "--json", "--data-dir", DATA_DIR, "--model", self.model)
        self.assertEqual(code, 0, err)
        result = json.loads(out)
        self.assertEqual(result["n"], 10000)
        self.assertEqual(np.array(result["confusion"]).shape, (10, 10))
        self.assertEqual(np.array(result["confusion"]).sum(), 10000)
        self.assertAlmostEqual(result["accuracy"], np.trace(result["confusion"]) / 10000)
        with np.load(self.model, allow_pickle=False) as z:
            self.assertAlmostEqual(result["accuracy"], json.loads(str(z["meta"]))["test_accuracy"])

    @needs_mnist
    def test_predict_json_on_drawn_images(self):
        _, _, X_test, y_test = real_mnist()
        Ws, bs, _ = mnist.load_model(self.model)
        from PIL import Image
        paths = []
        for i in range(10):
            # an MNIST test digit, enlarged 10x and drawn dark on light paper, like a scan
            big = np.kron(X_test[i].reshape(28, 28), np.ones((10, 10)))
            path = os.path.join(self.tmp.name, f"{y_test[i]}_{i}.png")
            Image.fromarray((255 - 255 * big).astype(np.uint8)).save(path)
            paths.append(path)
        code, out, err = run_cli("predict", "--json", "--model", self.model, *paths)
        self.assertEqual(code, 0, err)
        results = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([r["path"] for r in results], paths)
        for r in results:
            self.assertEqual(len(r["probabilities"]), 10)
            self.assertAlmostEqual(sum(r["probabilities"]), 1.0, places=4)
            self.assertEqual(r["digit"], int(np.argmax(r["probabilities"])))
        correct = sum(r["digit"] == int(y) for r, y in zip(results, y_test[:10]))
        self.assertGreaterEqual(correct, 8)

    def test_help_lists_every_command(self):
        code, out, _ = run_cli("--help")
        self.assertEqual(code, 0)
        for command in ("train", "evaluate", "predict", "gradcheck", "download"):
            self.assertIn(command, out)

    def test_gradcheck_command_passes(self):
        code, out, _ = run_cli("gradcheck")
        self.assertEqual(code, 0)
        self.assertIn("OK (limit 1e-6)", out)

    def assert_user_error(self, args, pattern):
        code, out, err = run_cli(*args)
        self.assertEqual(code, 2, (out, err))
        self.assertNotIn("Traceback", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertRegex(err, pattern)

    def test_bad_flag_values_exit_2_with_one_line(self):
        self.assert_user_error(["train", "--batch-size", "0"], "batch-size.*at least 1")
        self.assert_user_error(["train", "--hidden", "abc"], "hidden.*512,256")
        self.assert_user_error(["train", "--lr", "-1"], "lr.*positive")
        self.assert_user_error(["train", "--momentum", "1.5"], "momentum")
        self.assert_user_error(["frobnicate"], "invalid choice")

    def test_missing_or_broken_files_exit_2_with_one_line(self):
        missing = os.path.join(self.tmp.name, "nothing.npz")
        self.assert_user_error(["evaluate", "--model", missing], "no model at .*train")
        broken = os.path.join(self.tmp.name, "broken.npz")
        with open(broken, "w") as f:
            f.write("not a zip")
        self.assert_user_error(["predict", "x.png", "--model", broken], "not a model file")

    @needs_mnist
    def test_missing_image_and_unwritable_model_path_exit_2(self):
        self.assert_user_error(["predict", "--model", self.model, "no_such.png"], "no_such.png")
        self.assert_user_error(["train", "--data-dir", DATA_DIR, "--epochs", "1", "--hidden", "8",
                                "--model", "/no/such/folder/m.npz"], "cannot write the model")

    @needs_mnist
    def test_exploding_learning_rate_keeps_the_saved_model(self):
        with open(self.model, "rb") as f:
            before = f.read()
        self.assert_user_error(["train", "--data-dir", DATA_DIR, "--model", self.model,
                                "--epochs", "1", "--hidden", "16", "--lr", "1e6",
                                "--schedule", "constant"], "lower|too high")
        with open(self.model, "rb") as f:
            self.assertEqual(f.read(), before)


class TestTheFileAsALesson(unittest.TestCase):

    def test_importing_the_file_runs_nothing_and_needs_no_matplotlib(self):
        code = ("import sys, mnist_from_scratch; "
                "print('matplotlib' in sys.modules, 'PIL' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=HERE, timeout=60).stdout
        self.assertEqual(out.split(), ["False", "False"])

    def test_the_file_is_split_into_numbered_cells_in_story_order(self):
        with open(SCRIPT) as f:
            cells = [line for line in f if line.startswith("# %% [")]
        numbers = [int(line.split("[")[1].split("]")[0]) for line in cells]
        self.assertEqual(numbers, sorted(numbers))
        self.assertGreaterEqual(len(cells), 10)


if __name__ == "__main__":
    unittest.main()
