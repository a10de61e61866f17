"""A neural network that reads handwritten digits, written from scratch in NumPy.

This one file is the whole program. It

  1. loads MNIST (70,000 labelled 28x28 images of handwritten digits) from the original
     IDX files, or from CSV (the command line downloads and checks the IDX files first);
  2. builds a fully connected network: 784 pixels -> hidden layers -> 10 digit scores;
  3. trains it with mini-batch stochastic gradient descent, the gradients written out by hand
     (backpropagation) and checked against finite differences;
  4. evaluates it on the 10,000 test images it never saw while training;
  5. recognises a digit, or every digit of a number, in your own photo, scan or drawing.

Run it:

    python mnist_from_scratch.py train                 # about 99 % of the test digits right
    python mnist_from_scratch.py predict my_digit.png  # what digit is this?
    python mnist_from_scratch.py --help                # every command and option

or read it top to bottom, or copy parts of it into a slide or notebook. The file has two
parts. The lesson, sections [0] to [10], is everything a network needs from loading
the data to saving the model, in the order of the story and with no detours; each of its cells
runs when pasted below the cells above it. The functions that do the mathematics (`forward`,
`backward`, `softmax`, `cross_entropy`, `sgd_step`, ...) take arrays and numbers and return
arrays, and a function that calls others names them in its docstring's "Needs:" line, so you
know exactly what to copy with it. Two of them change their input to save memory, and say so:
`relu` overwrites Z, and `sgd_step` updates the weights in place.
The application follows: preparing real photos, pictures, a drawing window, a web page, and
the command line. The `# %% [n]` lines split the file into cells that VS Code, Spyder,
PyCharm and Jupytext run one at a time, like a notebook; `python mnist_from_scratch.py
notebook` writes the lesson as a Jupyter notebook, and `notebook --exercises` the same lesson
as an assignment, with a check after each function the student writes.

What it deliberately leaves out: convolutions (the network sees the image as a flat list of
784 numbers), automatic differentiation (every gradient is derived and written by hand), GPUs,
and any library beyond NumPy (matplotlib only for pictures). That keeps every step visible.

Notation, the same as in the README:
    X   (m, 784)     a mini-batch of m images, one per row, pixels in [0, 1]
    W, b             a layer's weights (n_in, n_out) and biases (n_out,)
    Z = A_prev W + b a layer's pre-activations;  A = f(Z) its activations (f = ReLU by default)
    P = softmax(Z)   the output layer's probabilities for the ten digits
    Y   (m, 10)      the labels one-hot: Y[i, k] = 1 if image i shows digit k
    L = -(1/m) sum Y log P            the cross-entropy loss
    dZ, dW, db, dA   the gradients of L with respect to Z, W, b, A

Sections:
  the lesson                                the application
    [0]  imports                              [11] predicting one image
    [1]  loading the data                     [11b] reading a number: cutting it into digits
    [2]  initialization                       [12] pictures
    [3]  forward pass                         [13] drawing a digit live
    [4]  loss                                 [14] serving the network over HTTP
    [5]  backward pass                        [15] the lesson as a notebook, and the exercises
    [6]  gradient check                       [16] getting the data: downloads, checksums
    [7]  training loop                        [17] command line
    [8]  evaluation
    [9]  saving and loading a model
    [10] better generalisation: distortions and dropout
"""

# %% [0] Imports
#
# The lesson (sections [0] to [10]) needs NumPy and the standard library only; each of its
# cells runs when pasted below the cells above it, so this cell comes first in any copy.
import gzip
import json
import math
import os
import time
import zipfile

import numpy as np


# %% [1] Loading the data
#
# MNIST comes as four files in the IDX format: training images and labels (60,000), test
# images and labels (10,000). An IDX file is a tiny header and then the raw numbers:
#
#   bytes 0-1  zero
#   byte  2    the type of every number: 0x08 unsigned byte, 0x09 signed byte, 0x0B 16-bit,
#              0x0C 32-bit integer, 0x0D 32-bit float, 0x0E 64-bit float
#   byte  3    the number of dimensions, d
#   then d     4-byte big-endian integers: the size of each dimension
#   then       the numbers themselves, big-endian, last dimension fastest (C order)
#
# So the training images start with 0x00000803 (unsigned bytes, 3 dimensions), then
# 60000, 28, 28, and then 60000 * 28 * 28 bytes of pixels. MNIST is white ink on black:
# 0 is the background, 255 the middle of a stroke. The network reads each image as one row
# of 784 numbers in [0, 1]. The files are published gzip-compressed (.gz);
# `python mnist_from_scratch.py download` fetches them into data/ and checks them.

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw, name="IDX data"):
    """Turn the bytes of an IDX file into a NumPy array of the shape its header gives.
    Needs: IDX_TYPES, math."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{name}: not an IDX file (the first two bytes must be zero)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_TYPES:
        raise ValueError(f"{name}: unknown IDX type code 0x{type_code:02X}")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{name}: IDX header is cut short ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = 4 + 4 * ndim + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(f"{name}: file is {what}: {len(raw)} bytes, header {shape} "
                         f"needs {expected}; delete it and download it again")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    # Big-endian -> this machine's byte order; single bytes need no conversion (and no copy).
    return data.astype(dtype.newbyteorder("="), copy=False)


# The files come compressed (.gz) or unpacked: read_bytes reads either, and load_idx parses
# what it read.


def read_bytes(path):
    """The bytes of a file, decompressed when its name ends in .gz. Needs: gzip."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # gzip raises these for a cut-off or non-gzip file
        raise ValueError(f"{path}: cannot read ({e}); delete it and download it again") from None


def load_idx(path):
    """Read an IDX file (.gz or raw) of any type and any number of dimensions.
    Needs: parse_idx, read_bytes, IDX_TYPES."""
    return parse_idx(read_bytes(path), path)


# The network wants each image as one row of numbers in [0, 1], with its label beside it.


def to_unit_float(pixels):
    """uint8 pixels 0..255 -> float32 in [0, 1], the scale the network is trained on.

    float32 rather than NumPy's default float64: half the memory, twice the speed of every
    matrix product, and far more precision than 8-bit pixels carry.
    """
    return np.multiply(pixels, np.float32(1 / 255), dtype=np.float32)


def images_and_labels(images, labels, name):
    """Check that images (n, 28, 28) and labels (n,) belong together; return X (n, 784), y.

    Each 28x28 image becomes one row of 784 numbers (row after row of pixels), and the pixels
    go from bytes 0..255 to float32 in [0, 1]. Needs: to_unit_float.
    """
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{name}: images must be 28x28, got shape {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"{name}: {len(images)} images but {labels.size} labels; "
                         f"the image and label files do not belong together")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{name}: labels must be digits 0..9")
    return to_unit_float(images.reshape(len(images), 784)), labels.astype(np.int64)


# Then the four files, found under any of the names they go by, and loaded together.


def find_idx_file(data_dir, stem):
    """The path of the IDX file `stem` in data_dir, compressed or not, or None. Needs: os."""
    # As published (.gz), unpacked, or as some copies spell it (train-images.idx3-ubyte).
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if os.path.exists(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return None


def load_mnist(data_dir="data"):
    """Return X_train (60000, 784), y_train, X_test (10000, 784), y_test from the four IDX
    files in data_dir; X float32 in [0, 1], y int64 digits 0..9.

    Fashion-MNIST's files have the same names, so load_mnist("data/fashion") reads it too.
    Needs: find_idx_file, load_idx, images_and_labels.
    """
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [find_idx_file(data_dir, stem) for stem in stems]
    for stem, path in zip(stems, paths):
        if path is None:
            raise FileNotFoundError(f"{stem}.gz is not in {data_dir}/: put MNIST's four files "
                                    f"there first")
    images, labels, test_images, test_labels = [load_idx(path) for path in paths]
    X_train, y_train = images_and_labels(images, labels, paths[0])
    X_test, y_test = images_and_labels(test_images, test_labels, paths[2])
    return X_train, y_train, X_test, y_test


# MNIST is also passed around as CSV: one image per row, the label first, then 784 pixels.


def load_csv(path):
    """Read digits from a CSV file; returns (X uint8 (m, 784), labels uint8 (m,) or None).

    Two layouts are common:
      * Kaggle "Digit Recognizer": a header `label,pixel0,...,pixel783`; its test.csv has
        no label column (784 columns), so the labels come back as None;
      * no header, each row `label,p1,...,p784` (the popular "MNIST in CSV" files).
    """
    try:
        with open(path, "r") as f:
            first = f.readline()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    has_header = any(c.isalpha() for c in first)
    try:
        rows = np.loadtxt(path, delimiter=",", skiprows=int(has_header), dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a CSV of whole numbers ({e})") from None
    if rows.shape[1] == 785:
        labels, pixels = rows[:, 0], rows[:, 1:]
    elif rows.shape[1] == 784:
        labels, pixels = None, rows
    else:
        raise ValueError(f"{path}: {rows.shape[1]} columns; expected 785 (label + 784 pixels) "
                         f"or 784 (pixels only)")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise ValueError(f"{path}: pixel values must lie in 0..255")
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be digits 0..9")
    return pixels.astype(np.uint8), None if labels is None else labels.astype(np.uint8)


# Try it: MNIST must be in data/ (`python mnist_from_scratch.py download` puts it there).
#     X_train, y_train, X_test, y_test = load_mnist("data")
#     print(X_train.shape, X_train.dtype, y_train[:10])      # (60000, 784) float32 [5 0 4 ...]


# %% [2] Initialization
#
# If every weight started equal, every hidden unit would compute the same thing and receive
# the same gradient forever, so the weights start random. Their scale matters: too small and
# the signal fades layer after layer, too large and it explodes. The rule is to keep the
# variance of the activations about the same from one layer to the next.
#
# He initialization (He et al., 2015), for ReLU:  W ~ Normal(0, std = sqrt(2 / n_in)).
#   A layer sums n_in inputs, so Var(Z) = n_in * Var(W) * E[A_prev^2]. ReLU zeroes half of its
#   inputs, which halves E[A^2]; the 2 in the numerator puts that half back.
# Xavier/Glorot initialization (2010), for sigmoid and tanh: std = sqrt(2 / (n_in + n_out)).
#   These are symmetric around 0 and nearly linear there, so there is no half to make up; the
#   average of fan-in and fan-out keeps the variance steady going forward and backward.
# Biases start at zero: the random weights already make the units differ.


def he_init(n_in, n_out, rng):
    """Weights for a layer followed by ReLU: Normal(0, sqrt(2 / n_in)), shape (n_in, n_out)."""
    return rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)


def xavier_init(n_in, n_out, rng):
    """Weights for a layer followed by sigmoid or tanh: Normal(0, sqrt(2 / (n_in + n_out)))."""
    return rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / (n_in + n_out))


# init_params takes the rule that suits the activation, for every layer of the network.


def init_params(sizes, activation="relu", seed=0, dtype=np.float32):
    """Random weights and zero biases for layer sizes like [784, 512, 256, 10].

    Returns Ws, bs: lists with one (n_in, n_out) weight matrix and one (n_out,) bias vector per
    layer. Every layer gets He initialization for ReLU, Xavier for sigmoid and tanh.
    Needs: he_init, xavier_init.
    """
    rng = np.random.default_rng(seed)
    init = he_init if activation == "relu" else xavier_init
    Ws = [init(n_in, n_out, rng).astype(dtype) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    bs = [np.zeros(n_out, dtype=dtype) for n_out in sizes[1:]]
    return Ws, bs


# %% [3] Forward pass
#
# Each layer is an affine map followed by a nonlinearity:
#     Z = A_prev W + b        (m, n_in) @ (n_in, n_out) + (n_out,) -> (m, n_out)
#     A = f(Z)
# with A_0 = X. The last layer has no f: its Z are the logits, which softmax turns into
# probabilities. Each activation's derivative sits right below it, written in terms of its
# output A, because A is what the forward pass keeps for the backward pass.


def relu(Z):
    """A = max(0, Z), computed IN PLACE: the array Z itself is overwritten and returned.

    forward() never needs Z again, so this saves a new (m, n) array per layer. If you call it
    yourself and want to keep Z, pass a copy: relu(Z.copy()).
    """
    return np.maximum(Z, 0, out=Z)  # out=Z: the result is written over Z, not into a new array


def relu_derivative(A):
    """dA/dZ = 1 where Z > 0 (equivalently A > 0), else 0."""
    return A > 0


# Two older activations, smooth S-shaped curves, each with its derivative.


def sigmoid(Z):
    """A = 1 / (1 + e^-Z), squashes to (0, 1)."""
    return 1 / (1 + np.exp(-Z))


def sigmoid_derivative(A):
    """dA/dZ = A (1 - A)."""
    return A * (1 - A)


def tanh(Z):
    """A = tanh(Z), squashes to (-1, 1)."""
    return np.tanh(Z)


def tanh_derivative(A):
    """dA/dZ = 1 - A^2."""
    return 1 - A * A


# Each name -> (f, f'). forward() and backward() look the pair up by name.
ACTIVATIONS = {"relu": (relu, relu_derivative),
               "sigmoid": (sigmoid, sigmoid_derivative),
               "tanh": (tanh, tanh_derivative)}


# At the end, softmax turns each image's ten scores into ten probabilities.


def softmax(Z):
    """P = e^Z / sum_k e^Z_k along each row: ten scores -> ten probabilities that sum to 1.

    Subtracting each row's maximum first changes nothing mathematically (it cancels between
    numerator and denominator) but keeps e^Z from overflowing for large scores.
    Needs: nothing but NumPy.
    """
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


# The forward pass itself: every layer in turn, each one's output kept for the backward pass.


def forward(X, Ws, bs, activation="relu"):
    """Run a batch through the network; return As = [X, A_1, ..., A_{L-1}, Z_L].

    As[l] are the activations of layer l (kept for the backward pass); the last entry is the
    output layer's logits Z_L (m, 10), before softmax.
    Needs: ACTIVATIONS (and the functions it names: relu, sigmoid, tanh and their derivatives).
    """
    f = ACTIVATIONS[activation][0]
    As = [X]
    for l, (W, b) in enumerate(zip(Ws, bs)):
        Z = As[-1] @ W  # (m, n_in) @ (n_in, n_out) -> (m, n_out)
        Z += b          # + (n_out,) added to every row; in place, no new (m, n_out) array
        if l < len(Ws) - 1:
            Z = f(Z)    # A = f(Z); relu writes it over Z
        As.append(Z)
    return As


# Two uses of it: the scores of any number of images, and their probabilities.


def logits(X, Ws, bs, activation="relu", batch=10000):
    """The output scores Z_L (m, 10) for any number of images, 10,000 at a time: the
    activations of one batch are freed before the next, so memory stays bounded.
    Needs: forward."""
    return np.concatenate([forward(X[i:i + batch], Ws, bs, activation)[-1]
                           for i in range(0, len(X), batch)] or [np.zeros((0, Ws[-1].shape[1]))])


def predict_proba(X, Ws, bs, activation="relu"):
    """Probabilities P = softmax(Z_L), shape (m, 10), for the images X (m, 784).
    Needs: logits, softmax."""
    return softmax(logits(X, Ws, bs, activation))


# Try it: an untrained network gives every digit a probability of about 0.1.
#     Ws, bs = init_params([784, 128, 10], seed=0)
#     print(predict_proba(X_train[:3], Ws, bs).round(2))


# %% [4] Loss
#
# Cross-entropy: L = -(1/m) sum_i log P[i, y_i], the average surprise at the true digit.
# With P = softmax(Z), log P[i, k] = Z[i, k] - log sum_j e^Z[i, j], and that last term is
# computed as max + log sum e^(Z - max) ("log-sum-exp"), which never overflows and never takes
# log(0), even when the network is very sure and very wrong.


def log_softmax(Z):
    """log P = Z - logsumexp(Z), row by row, computed stably."""
    shifted = Z - Z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(Z, y):
    """Mean cross-entropy loss of logits Z (m, 10) against integer labels y (m,).
    Needs: log_softmax."""
    return -log_softmax(Z)[np.arange(len(y)), y].mean()


# The loss is what training lowers; the accuracy, the share of right answers, is what a
# reader of digits is judged by.


def accuracy(Z, y):
    """Fraction of rows whose largest score is at the true label."""
    return float((Z.argmax(axis=1) == y).mean())


# Try it: the loss of an untrained network is close to -log(1/10) = 2.30.
#     print(cross_entropy(logits(X_train[:1000], Ws, bs), y_train[:1000]))


# %% [5] Backward pass
#
# Backpropagation is the chain rule applied layer by layer, from the loss back to the input.
# For softmax followed by cross-entropy the two derivatives combine into something simple:
#     dZ_L = (P - Y) / m              (m, 10)   where Y is one-hot
# (the 1/m of the mean is put into dZ once, so that the products below need no extra factor;
# the usual textbook form dW = (1/m) A^T (P - Y) is the same thing). Then, for each layer l
# from the last down:
#     dW = A_prev^T dZ                (n_in, m) @ (m, n_out) -> (n_in, n_out)
#     db = sum of dZ over the batch   (n_out,)
#     dA_prev = dZ W^T                (m, n_out) @ (n_out, n_in) -> (m, n_in)
#     dZ_prev = dA_prev * f'(A_prev)  elementwise; for ReLU: zero where the unit was off
# Every line works on the whole mini-batch at once: no Python loop over images.


def backward(As, y, Ws, activation="relu"):
    """Gradients of the mean cross-entropy: returns dWs, dbs shaped like Ws, bs.

    As: the list forward() returned, left unchanged; y: integer labels (m,).
    Needs: softmax, ACTIVATIONS (and the functions it names).
    """
    derivative = ACTIVATIONS[activation][1]
    m = len(y)
    dZ = softmax(As[-1])                # P (m, 10)
    dZ[np.arange(m), y] -= 1            # P - Y, without building the one-hot Y
    dZ /= m                             # (P - Y) / m
    dWs, dbs = [None] * len(Ws), [None] * len(Ws)
    for l in range(len(Ws) - 1, -1, -1):
        A_prev = As[l]
        dWs[l] = A_prev.T @ dZ          # (n_in, m) @ (m, n_out) -> (n_in, n_out)
        dbs[l] = dZ.sum(axis=0)         # (n_out,)
        if l == 0:
            break                       # the pixels need no gradient: skip the biggest product
        dA = dZ @ Ws[l].T               # (m, n_out) @ (n_out, n_in) -> (m, n_in)
        dA *= derivative(A_prev)        # dZ_prev = dA_prev * f'(Z_prev), in place
        dZ = dA
    return dWs, dbs


# %% [6] Gradient check
#
# A bug in backward() rarely crashes: the network just learns worse. So the gradients are
# compared with the definition of a derivative, numerically, one parameter at a time:
#     dL/dθ ≈ (L(θ + ε) - L(θ - ε)) / (2 ε)      (central differences, error ~ ε²)
# in float64 on a small network. The relative error |analytic - numeric| / (|analytic| +
# |numeric|), over all entries of a parameter, should be tiny: about 1e-9 for ReLU, up to a
# few times 1e-8 for sigmoid, whose gradients shrink layer by layer (f' <= 1/4), so that the
# rounding error of the differences is a larger share of them. Above 1e-6 means a bug.


def numerical_gradient(loss_of, theta, eps=1e-6):
    """Central-difference gradient of the scalar function loss_of() with respect to the array
    theta, which is perturbed in place entry by entry and restored."""
    grad = np.zeros_like(theta)
    flat, gflat = theta.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = loss_of()
        flat[i] = old - eps
        minus = loss_of()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(a, b):
    """|a - b| / (|a| + |b|) with norms over all entries; 0 when both are 0."""
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denom) if denom > 0 else 0.0


# gradient_check puts the two side by side, for every weight and bias of a small network.


def gradient_check(sizes=(20, 16, 12, 10), m=8, activation="relu", seed=0):
    """Relative error of every parameter's analytic gradient; returns [(name, error), ...].

    Needs: init_params (with he_init, xavier_init), forward, backward, cross_entropy,
    numerical_gradient, relative_error.
    """
    rng = np.random.default_rng(seed)
    Ws, bs = init_params(list(sizes), activation, seed, dtype=np.float64)
    for b in bs:
        b[:] = rng.normal(0, 0.1, b.shape)  # non-zero biases, so their gradients are tested too
    X = rng.random((m, sizes[0]))
    y = rng.integers(0, sizes[-1], m)

    def loss_of():
        return cross_entropy(forward(X, Ws, bs, activation)[-1], y)

    dWs, dbs = backward(forward(X, Ws, bs, activation), y, Ws, activation)
    errors = []
    for l in range(len(Ws)):
        errors.append((f"W{l + 1}", relative_error(dWs[l], numerical_gradient(loss_of, Ws[l]))))
        errors.append((f"b{l + 1}", relative_error(dbs[l], numerical_gradient(loss_of, bs[l]))))
    return errors


# Try it: every relative error should be far below 1e-6.
#     for name, error in gradient_check():
#         print(name, f"{error:.1e}")


# %% [7] Training loop
#
# One epoch = one pass over the training images in a random order, in mini-batches:
#     for each batch:  forward -> loss -> backward -> step
# The step is stochastic gradient descent with momentum, the same rule as PyTorch's SGD:
#     g = dW + λ W              L2 weight decay λ, added to the gradient (weights only)
#     v = μ v + g               the velocity: a running sum of recent gradients
#     W = W - η v               η: the learning rate
# Momentum lets consistent gradient directions build up speed and noisy ones cancel out.
# After every epoch the network is measured on validation images, which it never learns from,
# and the weights of the best epoch are kept: a network that trains too long starts to learn
# its training images by heart and gets worse on new ones. Two failures no later epoch mends,
# both from steps too big, stop the loop with an error that says so: the loss explodes, or
# every ReLU switches off for good ("dies"), and the network gives every image the same scores.


def sgd_step(params, grads, velocities, lr, momentum=0.9, weight_decay=0.0):
    """One step of SGD with momentum. Works IN PLACE and returns nothing: every array in
    params and velocities is updated where it is (-= and *= change an array itself), so the
    caller's Ws, bs and velocities hold the new values. grads are left as they were.
    Needs: nothing but NumPy."""
    for param, grad, v in zip(params, grads, velocities):
        g = grad + weight_decay * param if weight_decay else grad  # g = dW + λ W
        v *= momentum
        v += g                            # v = μ v + g
        param -= lr * v                   # W = W - η v


def train_step(X_batch, y_batch, Ws, bs, vWs, vbs, lr, momentum=0.9, weight_decay=0.0,
               activation="relu", dropout=0.0, rng=None):
    """One step on one mini-batch: forward, loss, backward, step.

    Updates Ws, bs and their velocities vWs, vbs in place; returns the batch's mean loss and
    how many of its images the network got right, both from before the step. With dropout > 0
    (section [10]) a random share of the hidden units, drawn from rng, is off for this step.
    Needs: forward, backward, cross_entropy, sgd_step; for dropout also dropout_masks,
    forward_with_dropout, backward_with_dropout.
    """
    if dropout:
        sizes = [Ws[0].shape[0]] + [W.shape[1] for W in Ws]
        masks = dropout_masks(sizes, len(X_batch), dropout, rng)
        As = forward_with_dropout(X_batch, Ws, bs, masks, activation)
    else:
        As = forward(X_batch, Ws, bs, activation)
    loss = float(cross_entropy(As[-1], y_batch))
    correct = int((As[-1].argmax(axis=1) == y_batch).sum())
    if dropout:
        dWs, dbs = backward_with_dropout(As, y_batch, Ws, masks, activation)
    else:
        dWs, dbs = backward(As, y_batch, Ws, activation)
    sgd_step(Ws, dWs, vWs, lr, momentum, weight_decay)
    sgd_step(bs, dbs, vbs, lr, momentum)  # no weight decay on biases
    return loss, correct


def train(X, y, X_val, y_val,
          hidden=(512, 256),  # two hidden layers, the command line's network
          epochs=9,           # passes over the images; the best epoch is the one returned
          batch_size=256,     # images per step: big enough for fast matrix products
          lr=0.1,             # η: 0.2 learns as well, 0.05 more slowly, 1.0 not at all
          momentum=0.9,       # μ: the usual value
          weight_decay=5e-5,  # λ: a little, against large weights
          seed=0,             # the same seed and number of BLAS threads give the same model
          activation="relu",  # relu, sigmoid or tanh (section [3])
          dropout=0.0,        # share of hidden units switched off in each step (section [10])
          prepare=None,       # prepare(X_epoch, rng): the images to learn from this epoch
          lr_at=None,         # lr_at(step): η at that step, e.g. a schedule; None: lr throughout
          on_batch=None,      # called as on_batch(epoch, fraction of the epoch done)
          on_epoch=None):     # called with each epoch's history entry, e.g. to print it
    """Train a network on X (n, 784), y (n,); return Ws, bs, history.

    The returned weights are those of the epoch with the best accuracy on X_val, y_val (of the
    last epoch when X_val is None or empty). history has one dict per epoch: train_loss and
    train_acc (averages over the epoch's mini-batches), val_loss, val_acc, and seconds (the
    training pass alone).
    Section [10] plugs its refinements in through prepare (distorted, centred images), lr_at
    (a schedule) and dropout. Two failures cannot mend themselves, and stop training with a
    FloatingPointError: a loss that explodes, and a network that gives every image the same
    scores (its hidden units are dead). Ctrl-C ends training early with the best epoch so far
    (history then has fewer than `epochs` entries).
    Needs: init_params, train_step, logits, cross_entropy, accuracy (and what those need).
    """
    Ws, bs = init_params([X.shape[1], *hidden, 10], activation, seed)
    vWs = [np.zeros_like(W) for W in Ws]  # the velocities v start at 0
    vbs = [np.zeros_like(b) for b in bs]
    rng = np.random.default_rng(seed + 1)  # the order of the images, epoch by epoch
    best, history, step = None, [], 0
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            order = rng.permutation(len(X))  # shuffle: a new random order every epoch
            X_epoch, y_epoch = X[order], y[order]
            if prepare is not None:
                X_epoch = prepare(X_epoch, rng)
            loss_sum, correct = 0.0, 0
            for i in range(0, len(X), batch_size):  # mini-batches
                X_batch, y_batch = X_epoch[i:i + batch_size], y_epoch[i:i + batch_size]
                eta = lr if lr_at is None else lr_at(step)
                loss, right = train_step(X_batch, y_batch, Ws, bs, vWs, vbs, eta, momentum,
                                         weight_decay, activation, dropout, rng)
                # A fresh network's loss is about log(10) = 2.3 and falls from there; 1000 (or
                # NaN, or infinity) means the steps are too big and it diverged.
                if not loss < 1000:
                    raise FloatingPointError(f"the loss exploded to {loss:.3g} in epoch {epoch}: "
                                             f"the learning rate {lr:g} is too high")
                loss_sum += loss * len(y_batch)
                correct += right
                step += 1
                if on_batch is not None:
                    on_batch(epoch, (i + batch_size) / len(X))
            entry = {"epoch": epoch, "train_loss": loss_sum / len(X), "train_acc": correct / len(X),
                     "val_loss": None, "val_acc": None, "seconds": time.perf_counter() - start}
            if X_val is not None and len(X_val):  # measure on the validation images
                Z_val = logits(X_val, Ws, bs, activation)
                entry["val_loss"] = float(cross_entropy(Z_val, y_val))
                entry["val_acc"] = accuracy(Z_val, y_val)
                # Every image gets the same scores (exactly; 1e-5 leaves room for rounding): no
                # hidden unit switches on any more, so no gradient reaches the weights before
                # them, for good.
                if len(Z_val) > 1 and np.ptp(Z_val, axis=0).max() < 1e-5:
                    raise FloatingPointError(
                        f"the network stopped learning in epoch {epoch}: its hidden units no "
                        f"longer switch on, so every image gets the same scores; the learning "
                        f"rate {lr:g} is too high")
            history.append(entry)
            if best is None or entry["val_acc"] is None or entry["val_acc"] > best[0]:
                best = (entry["val_acc"], [W.copy() for W in Ws], [b.copy() for b in bs])
            if on_epoch is not None:
                on_epoch(entry)
    except KeyboardInterrupt:  # Ctrl-C: stop here, with the best epoch so far
        if best is None:
            raise
    return best[1], best[2], history


# Try it: a small network on the first 10,000 images, 3 epochs, a few seconds.
#     def show(entry):
#         print(f"epoch {entry['epoch']}  validation accuracy {100 * entry['val_acc']:.2f} %")
#     Ws, bs, history = train(X_train[:10000], y_train[:10000], X_train[55000:],
#                             y_train[55000:], hidden=(128,), epochs=3, on_epoch=show)


# %% [8] Evaluation
#
# The test images were never used while training, nor to choose the best epoch (that was the
# validation images' job), so the accuracy on them is an honest estimate of how the network
# does on new digits. The confusion matrix shows which digits it mixes up.


def confusion_matrix(y_true, y_pred, classes=10):
    """C[i, j] = how many images of digit i the network called j. The diagonal is correct."""
    return np.bincount(classes * y_true.astype(np.int64) + y_pred, minlength=classes * classes
                       ).reshape(classes, classes)


def evaluate(X, y, Ws, bs, activation="relu"):
    """Loss, accuracy and confusion matrix of the network on the labelled images X, y.
    Needs: logits, cross_entropy, accuracy, confusion_matrix."""
    Z = logits(X, Ws, bs, activation)
    return {"loss": float(cross_entropy(Z, y)), "accuracy": accuracy(Z, y),
            "n": int(len(y)), "confusion": confusion_matrix(y, Z.argmax(axis=1))}


def format_confusion(confusion, class_names=None):
    """The confusion matrix and per-class accuracy as a text table; class_names (ten strings,
    e.g. "T-shirt/top") name the rows, which the columns then number."""
    lines = ["true \\ predicted " + "".join(f"{k:>6}" for k in range(10)) + "   correct"]
    for k, row in enumerate(confusion):
        total = row.sum()
        acc = f"{100 * row[k] / total:8.2f} %" if total else "       -"
        name = f"{k} {class_names[k]:<14}" if class_names and class_names[k] != str(k) else k
        lines.append(f"{name:>16} " + "".join(f"{c:>6}" for c in row) + acc)
    return "\n".join(lines)


# Try it:
#     result = evaluate(X_test, y_test, Ws, bs)
#     print(f"test accuracy {100 * result['accuracy']:.2f} %")
#     print(format_confusion(result["confusion"]))


# %% [9] Saving and loading a model
#
# A model is one .npz file (NumPy's zip of arrays): W1, b1, W2, b2, ... and "meta", a JSON
# string with the layer sizes, the activation, the training settings and results. It is loaded
# with allow_pickle=False, so opening a model file can never run code hidden in it. It is
# written to a temporary file first and renamed when complete, so an interrupted save never
# leaves half a model.

MODEL_FORMAT = 1


def write_atomically(path, write):
    """Write a file via a temporary file in the same folder, renamed over the target when
    complete: an interrupted run leaves the old file or the new one, never half of one.
    Needs: os."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")  # same folder: rename is atomic
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(path, Ws, bs, meta):
    """Save weights, biases and meta (a dict) to path as .npz, atomically.
    Needs: write_atomically, MODEL_FORMAT, json."""
    arrays = {}
    for l, (W, b) in enumerate(zip(Ws, bs), start=1):
        arrays[f"W{l}"], arrays[f"b{l}"] = W, b
    meta = dict(meta, format=MODEL_FORMAT, sizes=[Ws[0].shape[0]] + [W.shape[1] for W in Ws])
    arrays["meta"] = np.array(json.dumps(meta))
    write_atomically(path, lambda f: np.savez(f, **arrays))  # an OSError says why it cannot


def load_model(path):
    """Load a model saved by save_model; returns Ws, bs, meta. Refuses anything else.
    Raises FileNotFoundError when there is no file, ValueError when it is not such a model.
    Needs: MODEL_FORMAT, ACTIVATIONS, os, zipfile, json."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model at {path}")
    if not zipfile.is_zipfile(path):  # an .npz is a zip archive of .npy files
        raise ValueError(f"{path}: not a model file of this program (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError:
        raise ValueError(f"{path}: refused: it holds pickled Python objects, which could run "
                         f"code when loaded; a model file holds plain arrays only") from None
    except Exception as e:  # a damaged archive
        raise ValueError(f"{path}: not a model file of this program ({e})") from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
        sizes = meta["sizes"]
        L = len(sizes) - 1
        Ws = [arrays.pop(f"W{l}") for l in range(1, L + 1)]
        bs = [arrays.pop(f"b{l}") for l in range(1, L + 1)]
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a model file of this program (missing {e})") from None
    if meta.get("format", MODEL_FORMAT) > MODEL_FORMAT:
        raise ValueError(f"{path}: written by a newer version of this program (model format "
                         f"{meta['format']}, this one reads {MODEL_FORMAT}); update the program")
    for l, (W, b) in enumerate(zip(Ws, bs)):
        if W.shape != (sizes[l], sizes[l + 1]) or b.shape != (sizes[l + 1],) \
                or W.dtype.kind != "f" or b.dtype.kind != "f":
            raise ValueError(f"{path}: layer {l + 1} has shape {W.shape}/{b.shape}, but the "
                             f"file says the sizes are {sizes}; the file is damaged")
    meta.setdefault("activation", "relu")  # a model that does not say is a ReLU network
    if sizes[0] != 784 or sizes[-1] != 10 or meta["activation"] not in ACTIVATIONS:
        raise ValueError(f"{path}: not an MNIST model of this program (sizes {sizes})")
    return Ws, bs, meta


# Try it:
#     save_model("my_model.npz", Ws, bs, {"activation": "relu"})
#     Ws2, bs2, meta = load_model("my_model.npz")
#     print(meta["sizes"], evaluate(X_test, y_test, Ws2, bs2)["accuracy"])


# %% [10] Better generalisation: distorted digits and dropout
#
# The plain network of section [7] gets nearly every training image right but fewer of the
# test images, about 98 %: it has partly learned its training images by heart. Four
# refinements make it generalise better or learn faster; train_full, at the end of this
# section, plugs them into the loop of train(), and is the training the command line runs.
#
# 1. Distorted digits (data augmentation). People write the same 7 further left, tilted,
#    slanted, narrower, with a shaky stroke. Before every epoch each training image is
#    distorted a little, at random, and keeps its label, so the network learns what makes a 7
#    rather than the exact pixels of 55,000 images. Simard, Steinkraus and Platt (2003) took a
#    plain fully connected network from about 98.4 % to 99.3 % with two distortions:
#      an affine map: shift, rotate, scale and slant (shear) the whole digit,
#        q = A (p - c) + c + t    p = (row, col) in the old image, q in the new one, c the centre
#      an elastic distortion: each pixel moves a little, smoothly varying (a rubber sheet),
#        q = p + d(p)    d = alpha * (Gaussian blur of uniform noise in [-1, 1])
#    Each pixel q of the new image is read from the old image where it comes from (the inverse
#    map leaves no holes), by bilinear interpolation: mostly between pixels, mixing four.
# 2. Dropout (Srivastava et al., 2014). In every training step each hidden unit is switched
#    off at random, so no unit can rely on another being there: the network learns redundant
#    features, which generalise better.
#        A = f(Z) * mask    mask = 0 (dropped) or 1 / keep (kept), drawn anew for every batch
#    At test time nothing is dropped.
# 3. Centred inputs (LeCun et al., "Efficient BackProp", 1998). Pixels are all >= 0, so the
#    gradients of one unit's weights, dW = A_prev^T dZ, all share the sign of dZ and the steps
#    zig-zag; inputs centred on 0 do not. The network learns on X - mean, and since
#        (X - mean) W1 + b1 = X W1 + (b1 - mean W1)
#    the biases b1 - mean W1 give the same outputs on raw images: that is what is returned.
# 4. A cosine learning rate: big steps early to make progress, small ones late to settle,
#        η_t = η (1 + cos(π t / T)) / 2    step t of T, from η down to 0
#
# Images and sampling coordinates below are batches (m, 28, 28) in (row, column) order, as in
# array indexing (row i grows downwards, column j to the right), pixel centres at the whole
# numbers 0..27, the centre of the frame at c = (13.5, 13.5).


def random_affine_grids(m, rng, max_shift=0.0, max_rotation_deg=0.0, max_scale=0.0,
                        max_shear=0.0, size=28):
    """Sampling coordinates (rows, cols), (m, size, size) float32, of m random affine maps:
    new pixel (n, i, j) is read from old image n at (rows[n, i, j], cols[n, i, j]).

    Each image's parameters are uniform: shift t_row, t_col in +-max_shift pixels; rotation
    theta in +-max_rotation_deg degrees; scale s_row, s_col in 1 +- max_scale, each axis on its
    own; shear h in +-max_shear (the column moves by h per row, a slant). The map and its inverse:
        q = A (p - c) + c + t,    A = R(theta) @ H(h) @ S(s_row, s_col)   (2x2)
        p = A^-1 (q - c - t) + c
    All strengths 0 give the pixel grid itself: rows[n, i, j] = i, cols[n, i, j] = j.
    """
    t_row = rng.uniform(-max_shift, max_shift, size=m)  # one number per image: (m,) vectors
    t_col = rng.uniform(-max_shift, max_shift, size=m)
    theta = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, size=m))
    s_row = rng.uniform(1.0 - max_scale, 1.0 + max_scale, size=m)
    s_col = rng.uniform(1.0 - max_scale, 1.0 + max_scale, size=m)
    h = rng.uniform(-max_shear, max_shear, size=m)
    # S = [[s_row, 0], [0, s_col]], H = [[1, 0], [h, 1]], R = [[cos, -sin], [sin, cos]];
    # A = R @ H @ S entry by entry, so that it stays a product of (m,) vectors:
    cos, sin = np.cos(theta), np.sin(theta)
    a00, a01 = (cos - sin * h) * s_row, -sin * s_col
    a10, a11 = (sin + cos * h) * s_row, cos * s_col
    # A^-1 = [[a11, -a01], [-a10, a00]] / det A, and det A = s_row s_col > 0 (max_scale < 1).
    det = a00 * a11 - a01 * a10
    i00, i01, i10, i11 = a11 / det, -a01 / det, -a10 / det, a00 / det
    # p = A^-1 (q - c - t) + c on the grid q = (i, j) is separable: with u = i - c - t_row and
    # v = j - c - t_col, rows = i00 u + i01 v + c is an (m, size, 1) column plus an
    # (m, 1, size) row. They are made float32 first: the big sums are then float32 too.
    c = (size - 1) / 2.0
    du = (np.arange(size) - c)[None, :] - t_row[:, None]              # (m, size): u
    dv = (np.arange(size) - c)[None, :] - t_col[:, None]              # (m, size): v
    rows = ((i00[:, None] * du + c).astype(np.float32)[:, :, None]
            + (i01[:, None] * dv).astype(np.float32)[:, None, :])     # (m, size, size)
    cols = ((i10[:, None] * du).astype(np.float32)[:, :, None]
            + (i11[:, None] * dv + c).astype(np.float32)[:, None, :])
    return rows, cols


def gaussian_matrix(size, sigma, centres=None):
    """The (size, k) matrix G[i, a] = g(i - x_a) of a Gaussian g of std sigma, normalised so
    that the whole kernel g(-(size-1)) .. g(size-1) sums to 1. By default x_a = a, every
    pixel: then G @ x is x blurred (values outside the frame count as 0). `centres` gives
    other positions x_a, such as control points; they need not be whole numbers."""
    offsets = np.arange(-(size - 1), size)
    Z = np.exp(-offsets ** 2 / (2.0 * sigma ** 2)).sum()
    x = np.arange(size, dtype=np.float64) if centres is None else np.asarray(centres, float)
    d = np.arange(size)[:, None] - x[None, :]                  # (size, k): i - x_a
    return (np.exp(-d ** 2 / (2.0 * sigma ** 2)) / Z).astype(np.float32)


def elastic_displacement(m, rng, alpha, sigma, size=28):
    """Random smooth displacements (d_rows, d_cols), each (m, size, size) float32.

    Simard's recipe, per image and direction: uniform noise in [-1, 1] at every pixel, blurred
    by a Gaussian of std sigma (small sigma jitters, large sigma bends the whole digit), times
    alpha; the blur averages about 4 pi sigma^2 values, so alpha = 25, sigma = 5 moves pixels
    by about 0.8 px. As the blur keeps no detail finer than sigma, the noise is drawn only at
    k x k control points h <= sigma apart, each weighted by h: the same field from 6 x 6
    random numbers instead of 28 x 28 when sigma = 5. Needs: gaussian_matrix, math.
    """
    k = min(size, math.ceil(size / sigma))                    # control points per side
    h = size / k                                               # their spacing
    centres = (np.arange(k) + 0.5) * h - 0.5                   # spread evenly over the frame
    field = (alpha * h) * (2.0 * rng.random((m, 2, k, k), dtype=np.float32) - 1.0)
    # A 2-D Gaussian is separable, g(di, dj) = g(di) g(dj), so the blur is two matrix products:
    # d[i, j] = sum_a sum_b g(i - x_a) g(j - x_b) F[a, b] = (G @ F @ G.T)[i, j].
    G = gaussian_matrix(size, sigma, centres)                  # (size, k)
    displacement = G @ field @ G.T                             # (s,k) @ (m,2,k,k) @ (k,s)
    return displacement[:, 0], displacement[:, 1]


# Bilinear interpolation reads an image at a point (row, col) between pixels: with
# r0 = floor(row), c0 = floor(col) and the fractions fr = row - r0, fc = col - c0 in [0, 1),
#     top    = I[r0, c0]     + fc (I[r0, c0 + 1]     - I[r0, c0])
#     bottom = I[r0 + 1, c0] + fc (I[r0 + 1, c0 + 1] - I[r0 + 1, c0])
#     value  = top + fr (bottom - top)
# weights (1-fr)(1-fc), (1-fr)fc, fr(1-fc), fr fc that sum to 1; at whole numbers, the pixel
# itself. Outside the frame the image is black. It is done in two steps, where to read (a plan)
# and reading, so that one plan can read many images (augment_batch's maps).


def sampling_plan(rows, cols, H=28, W=28):
    """Where bilinear interpolation reads for coordinates rows, cols (m, H2, W2) in an H x W
    frame: (where, fr, fc), each (m, H2, W2); `where` is the flat index of (r0, c0) in the image
    framed by a black border (bilinear_read), fr and fc the fractions."""
    # A point more than a pixel outside the frame is black: clip it onto the black border,
    # one pixel above and left of the frame, two below and right.
    rows = np.clip(rows, -1.0, H)
    cols = np.clip(cols, -1.0, W)
    r0, c0 = np.floor(rows), np.floor(cols)
    # (r0, c0) is (r0 + 1, c0 + 1) in the bordered image, whose rows have W + 3 pixels.
    where = (r0.astype(np.int32) + 1) * (W + 3) + (c0.astype(np.int32) + 1)
    return where, rows - r0, cols - c0


def bilinear_read(images, plan):
    """Read images (m, H, W) float32 where sampling_plan says; returns (m, H2, W2)."""
    where, fr, fc = plan
    m, H, W = images.shape
    padded = np.zeros((m, H + 3, W + 3), dtype=images.dtype)  # the black border
    padded[:, 1:H + 1, 1:W + 1] = images
    # Flat indices into the whole bordered batch; int32 (half the memory traffic of int64)
    # holds them for up to 2 million images, and augment_batch reads 256 at a time.
    stride = W + 3
    flat = where + (np.arange(m, dtype=np.int32) * ((H + 3) * stride))[:, None, None]
    pixels = padded.reshape(-1)
    top_left, top_right = np.take(pixels, flat), np.take(pixels[1:], flat)
    bottom_left, bottom_right = np.take(pixels[stride:], flat), np.take(pixels[stride + 1:], flat)
    top = top_left + fc * (top_right - top_left)
    bottom = bottom_left + fc * (bottom_right - bottom_left)
    return top + fr * (bottom - top)


def bilinear_sample(images, rows, cols):
    """Images (m, H, W) read at the coordinates rows, cols (m, H2, W2): out[n, i, j] is image n
    at (rows, cols)[n, i, j], by bilinear interpolation. Needs: sampling_plan, bilinear_read."""
    return bilinear_read(images, sampling_plan(rows, cols, *images.shape[1:]))


def augment_batch(images, rng, max_shift=1.0, max_rotation_deg=7.5, max_scale=0.075,
                  max_shear=0.15, elastic_alpha=25.0, elastic_sigma=5.0, mirror=0.0, maps=None):
    """Randomly distorted copies of images (m, 28, 28) or (m, 784), float32 in [0, 1]: an affine
    map (random_affine_grids) and an elastic distortion (elastic_displacement), read by bilinear
    interpolation. Returns the same shape; the labels stay valid as they are.

    The same rng seed gives the same distortions; a strength 0 switches its part off; the
    defaults are the "light" preset. mirror: the chance that an image is mirrored left to
    right, for clothes (a mirrored 3 is no 3). maps: how many distortions to draw (in whole
    chunks of 256), dealt out so that image i gets distortion i % maps, or None: one each.
    Drawing costs more than reading, so train_full draws 2,048 per epoch: half the time, as
    accurate (docs/results.md). Needs: random_affine_grids, elastic_displacement,
    sampling_plan, bilinear_read, mirror_some.
    """
    images = np.asarray(images)
    out = np.empty_like(images).reshape(-1, 28, 28)
    if max_shift == max_rotation_deg == max_scale == max_shear == elastic_alpha == 0:
        out[...] = images.reshape(out.shape)  # nothing to distort: no random numbers drawn
    else:
        reuse = maps is not None and maps < len(out)
        kept = []  # the plans drawn, to deal out again when reuse
        for number, start in enumerate(range(0, len(out), 256)):  # 256: stays in the cache
            chunk = images.reshape(out.shape)[start:start + 256]
            if reuse and number * 256 >= maps:
                plan = [part[:len(chunk)] for part in kept[number % len(kept)]]
            else:
                rows, cols = random_affine_grids(len(chunk), rng, max_shift, max_rotation_deg,
                                                 max_scale, max_shear)
                if elastic_alpha > 0:  # the elastic field moves each reading point a little
                    d_rows, d_cols = elastic_displacement(len(chunk), rng, elastic_alpha,
                                                          elastic_sigma)
                    rows, cols = rows + d_rows, cols + d_cols
                plan = sampling_plan(rows, cols)
                if reuse:
                    kept.append(plan)
            out[start:start + 256] = bilinear_read(chunk, plan)
    mirror_some(out, rng, mirror)
    return out.reshape(images.shape)


def mirror_some(images, rng, chance):
    """Mirror each image of (m, 28, 28) left to right with the given chance, in place."""
    if chance > 0:
        chosen = rng.random(len(images)) < chance
        images[chosen] = images[chosen, :, ::-1]                # columns in reverse order


# Dropout: each hidden layer's A = f(Z) * mask, and the backward pass multiplies its gradient
# by the same mask, so a dropped unit passes nothing back. These passes are twins of forward()
# and backward() rather than an option of theirs, so that [3] and [5] stay as taught, and the
# twins show the one line dropout adds forward and the two it adds backward.


def dropout_masks(sizes, m, rate, rng, dtype=np.float32):
    """Masks for inverted dropout, one (m, n) array per hidden layer of sizes: each unit kept
    with probability keep = 1 - rate, and a kept one divided by keep, so the expected
    activation is unchanged and nothing needs rescaling at test time, when nothing is dropped."""
    keep = 1.0 - rate
    return [(rng.random((m, n), dtype=dtype) < keep) * dtype(1 / keep) for n in sizes[1:-1]]


def forward_with_dropout(X, Ws, bs, masks, activation="relu"):
    """forward() of section [3] with each hidden layer's A = f(Z) * mask (masks from
    dropout_masks); returns As = [X, A_1, ..., A_{L-1}, Z_L].
    Needs: ACTIVATIONS (and the functions it names)."""
    f = ACTIVATIONS[activation][0]
    As = [X]
    for l, (W, b) in enumerate(zip(Ws, bs)):
        Z = As[-1] @ W  # (m, n_in) @ (n_in, n_out) -> (m, n_out)
        Z += b
        if l < len(Ws) - 1:
            Z = f(Z)
            Z *= masks[l]  # A = f(Z) * mask: the one line dropout adds
        As.append(Z)
    return As


def backward_with_dropout(As, y, Ws, masks, activation="relu"):
    """backward() of section [5] for forward_with_dropout (the same masks); returns dWs, dbs.
    Needs: softmax, ACTIVATIONS (and the functions it names)."""
    derivative = ACTIVATIONS[activation][1]
    m = len(y)
    dZ = softmax(As[-1])                # P (m, 10)
    dZ[np.arange(m), y] -= 1            # P - Y
    dZ /= m                             # (P - Y) / m
    dWs, dbs = [None] * len(Ws), [None] * len(Ws)
    for l in range(len(Ws) - 1, -1, -1):
        A_prev = As[l]
        dWs[l] = A_prev.T @ dZ          # (n_in, m) @ (m, n_out) -> (n_in, n_out)
        dbs[l] = dZ.sum(axis=0)         # (n_out,)
        if l == 0:
            break
        dA = dZ @ Ws[l].T               # (m, n_out) @ (n_out, n_in) -> (m, n_in)
        # A_prev = f(Z_prev) * mask, so dropped units pass nothing back and kept ones are
        # scaled by 1/keep; f' needs f(Z_prev) = A_prev / mask where the unit was kept.
        mask = masks[l - 1]
        dA *= mask
        A_prev = np.divide(A_prev, mask, out=np.zeros_like(A_prev), where=mask != 0)
        dA *= derivative(A_prev)        # dZ_prev = dA * mask * f'(Z_prev)
        dZ = dA
    return dWs, dbs


def gradient_check_with_dropout(sizes=(20, 16, 12, 10), m=8, activation="relu", rate=0.5,
                                seed=0):
    """gradient_check() of section [6] for the network with dropout, one set of masks held
    fixed; returns [(name, error), ...]. Needs: init_params (with he_init, xavier_init),
    dropout_masks, forward_with_dropout, backward_with_dropout, cross_entropy,
    numerical_gradient, relative_error."""
    rng = np.random.default_rng(seed)
    Ws, bs = init_params(list(sizes), activation, seed, dtype=np.float64)
    for b in bs:
        b[:] = rng.normal(0, 0.1, b.shape)
    X = rng.random((m, sizes[0]))
    y = rng.integers(0, sizes[-1], m)
    masks = dropout_masks(sizes, m, rate, rng, np.float64)

    def loss_of():
        return cross_entropy(forward_with_dropout(X, Ws, bs, masks, activation)[-1], y)

    dWs, dbs = backward_with_dropout(forward_with_dropout(X, Ws, bs, masks, activation), y, Ws,
                                     masks, activation)
    errors = []
    for l in range(len(Ws)):
        errors.append((f"W{l + 1}", relative_error(dWs[l], numerical_gradient(loss_of, Ws[l]))))
        errors.append((f"b{l + 1}", relative_error(dbs[l], numerical_gradient(loss_of, bs[l]))))
    return errors


def learning_rate(schedule, lr, step, total_steps):
    """η at a step: lr throughout ("constant"), or the cosine from lr down to 0. Needs: math."""
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return lr


def train_full(X, y, X_val=None, y_val=None,
               hidden=(512, 256),   # two hidden layers, the network the command line trains
               activation="relu",   # relu, sigmoid or tanh (section [3])
               epochs=9,            # chosen on the validation images and USPS, see docs/results.md
               batch_size=256,      # with lr 0.2 as accurate as 128 with 0.1, and faster
               lr=0.2,              # η at the start of the cosine, for batches of 256
               momentum=0.9,        # μ: the usual value
               weight_decay=5e-5,   # λ: a little, against large weights
               schedule="cosine",   # or "constant": lr all the way
               dropout=0.0,         # fraction of hidden units dropped: 0.1 gained too little
               augment=None,        # None, or augment_batch's strengths ({}: its own defaults)
               distortions=2048,    # drawn per epoch and dealt out (0: one per image): as
                                    # accurate in half the distorting time, docs/results.md
               center=True,         # learn on centred inputs (above): better in fewer epochs
               seed=0,              # the same seed and number of BLAS threads give the same model
               on_epoch=None,       # called with each epoch's history entry
               on_progress=None):   # called as on_progress(epoch, fraction) after every batch
    """train() of section [7] with this section's refinements plugged in, as the command line
    trains; returns Ws, bs, history, interrupted (Ctrl-C stopped it, with the best so far).

    prepare distorts and centres each epoch's shuffled images, lr_at follows the schedule and
    train_step drops units. As in train(), the best epoch on X_val, y_val is returned; history's
    train_loss and train_acc are as the network saw the images, distorted and with dropout.
    The returned network takes raw images, also when it learned on centred ones.
    Needs: train, augment_batch, learning_rate (and what those need).
    """
    total_steps = epochs * math.ceil(len(X) / batch_size)
    mean = X.mean(axis=0) if center else np.float32(0)  # the mean training image, (784,)

    def prepare(X_epoch, rng):  # this epoch's images: freshly distorted, then centred
        if augment is not None:
            X_epoch = augment_batch(X_epoch, rng, **augment, maps=distortions or None)
        if center:
            X_epoch -= mean  # in place: X_epoch is this epoch's own shuffled copy
        return X_epoch

    Ws, bs, history = train(X, y, None if X_val is None else X_val - mean, y_val, hidden=hidden,
                            epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                            weight_decay=weight_decay, seed=seed, activation=activation,
                            dropout=dropout, prepare=prepare,
                            lr_at=lambda step: learning_rate(schedule, lr, step, total_steps),
                            on_batch=on_progress, on_epoch=on_epoch)
    if center:  # b1 - mean @ W1: the same outputs on raw images
        bs = [bs[0] - mean @ Ws[0], *bs[1:]]
    return Ws, bs, history, len(history) < epochs


# Try it: digits distorted, dropout's gradients checked, a short run of train_full with both.
#     distorted = augment_batch(np.repeat(X_train[:4], 3, axis=0), np.random.default_rng(0))
#     print(max(error for _, error in gradient_check_with_dropout()))
#     Ws, bs, history, _ = train_full(X_train[:10000], y_train[:10000], X_train[55000:],
#                                     y_train[55000:], hidden=(128,), epochs=3, dropout=0.1,
#                                     augment={}, on_epoch=show)


# %% [11] Predicting one image: turning any image into an MNIST-like 28x28 input
#
# A network that scores 98 % on the MNIST test set often guesses wrong on a phone photo of a digit
# written on paper. The network is not the problem: the photo simply does not look like MNIST.
# MNIST digits were prepared in a very specific way, and a new image must be prepared the same way
# before the network can recognise it. That preparation, the MNIST recipe, is what every image
# goes through (image_to_mnist):
#
#   read_image            file -> gray values in [0, 1] (+ transparency, if any), a large photo
#                         shrunk as it is read to at most 640 pixels a side (memory, speed)
#   composite_alpha       transparent background -> an ordinary background of the right colour
#   shrink_by_block_mean  the same shrinking for an image given as an array
#   decide_polarity       which is the background: the light or the dark? MNIST is white on black
#   remove_background     ink strength = how much darker than the paper around it a pixel is
#   find_the_digit        ink / not ink (Otsu), and the pixels that make up the digit
#   crop_to_ink           cut away the empty margins
#   normalise_stroke_width  thicken a thin pen line to MNIST's relative stroke width (~2 of 20 px)
#   fit_in_box            anti-aliased scaling so the longer side is 20 pixels
#   center_by_mass        place in 28x28 with the centre of mass at (14, 14)
#
# A photo of paper adds what MNIST never had: uneven light, the table around the page, the
# printed lines of squared or ruled paper, specks. find_the_digit deals with each of them in a
# step of its own, and each step acts ONLY when it finds what it looks for (a table running along
# the edge, lines reaching far past everything else, pieces far smaller than the digit), so a
# clean digit (a drawing, a scan, a tight crop, an MNIST-like image) goes through unchanged:
#
#   estimate_background   the paper's brightness, block by block: flat unless the light varies
#   outside_the_page      the table around a photographed page is not part of the digit
#   remove_grid_lines     lines far longer than the rest of the ink, but not the strokes crossing them
#   keep_digit_components drop specks and distant marks, keep the pieces that make up the digit
#
# The answer "no digit found" (None) is kept for images with truly nothing in them: nothing
# stands out from the paper's own noise, or, with printed lines and the table set aside, the
# largest piece of ink left is no bigger than a speck, or a small piece cut by the picture's edge.
# Every intermediate image is kept in `steps`, so `predict --plot --steps` can draw them.

# The application needs a few more of the standard library's modules than the lesson did, and
# one kind of error of its own.
import argparse
import hashlib
import sys
import textwrap


class UserError(Exception):
    """A problem the user can fix (a missing file, a bad option): printed as one line, exit 2."""


# MNIST's own numbers, the defaults of the steps below: images of 28x28 pixels, each digit scaled
# to fit a 20x20 box inside them, the mean centre of mass of MNIST digits measured at (14.0, 14.0),
# and the median stroke width (2 area / perimeter) measured at 0.099 of the digit's longer side.


EXIF_ORIENTATION = 0x0112  # the EXIF tag in which a camera says how the picture is turned
# What each EXIF orientation asks for, as array operations (those of Pillow's exif_transpose).
UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.T,
           6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].T, 8: lambda a: np.rot90(a)}


def read_image(path, max_side=640):  # larger photos are shrunk first: a digit needs far fewer pixels
    """Read an image file of any size and mode (RGB, RGBA, L, LA, palette, 16-bit, JPEG, ...).

    Returns (gray, alpha): gray is a float32 (height, width) array in [0, 1] (0 = black,
    1 = white); alpha is a float32 array of the same shape in [0, 1] (0 = fully transparent),
    or None when the image has no transparent pixels.
    An image with a side longer than max_side is shrunk as it is read, by the whole factor
    ceil(longest side / max_side): each pixel of the result is the mean of a factor x factor block,
    as shrink_by_block_mean makes it. A JPEG is decoded at 1/2, 1/4 or 1/8 of its size where the
    factor allows (libjpeg averages in its own transform, nearly for free), and the rest is
    averaged in integer block sums a tile at a time, so no image of millions of pixels ever
    becomes a float array: memory and time stay bounded whatever the pixel count.
    max_side=None keeps every pixel.
    Raises ValueError with a one-line message when the file cannot be read.
    """
    from PIL import Image  # Pillow is only needed here, so it is imported here

    try:
        with Image.open(path) as image:  # "with": the file is closed even when reading fails
            # Phone cameras store "rotate me" in the EXIF data instead of rotating the pixels.
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            width, height = image.size
            factor = -(-max(width, height) // max_side) if max_side else 1   # ceil, at least 1
            size = (max(1, width // factor), max(1, height // factor))       # a side under factor: 1
            decoded_at = 1
            if image.format in ("JPEG", "MPO") and factor > 1:   # MPO: a phone's JPEG with extras
                decoded_at = max(s for s in (8, 4, 2, 1) if factor % s == 0 and s <= min(width, height))
                image.draft("L", (width // decoded_at, height // decoded_at))  # the gray channel only
            image.load()
            gray, alpha = shrink_while_reading(image, factor // decoded_at, size)
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path}") from None
    except Exception as error:  # Pillow raises several kinds of errors for broken files
        raise ValueError(f"cannot read image {path}: {error} (is it a PNG or JPEG?)") from None
    turn = UPRIGHT.get(orientation, lambda a: a)
    gray = np.ascontiguousarray(turn(np.clip(gray, 0.0, 1.0)))
    return gray, None if alpha is None else np.ascontiguousarray(turn(alpha))


def has_transparency(image):
    """Whether a Pillow image can hold transparent pixels."""
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def luma(red, green, blue):
    """ITU-R 601 luma, the same weights Pillow uses to convert colour to gray ("L")."""
    return red * 0.299 + green * 0.587 + blue * 0.114


def gray_and_alpha(image, largest=255.0):
    """A decoded Pillow image (or a tile of one) -> float32 gray and alpha (or None) in [0, 1]."""
    if has_transparency(image):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return luma(rgba[:, :, 0], rgba[:, :, 1], rgba[:, :, 2]), rgba[:, :, 3]
    if image.mode.startswith("I") or image.mode == "F":
        return np.asarray(image, dtype=np.float32) / largest, None
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0, None


def block_sums(pixels, block_y, block_x):
    """The sum over each block_y x block_x block of an (h, w) or (h, w, channels) integer array,
    in integers, so exactly (and several times faster than a mean over floats)."""
    rows, cols = pixels.shape[0] // block_y, pixels.shape[1] // block_x
    blocks = pixels.reshape(rows, block_y, cols, block_x, *pixels.shape[2:])
    return blocks.sum(axis=(1, 3), dtype=np.uint64)


def shrink_while_reading(image, factor, size):
    """A decoded Pillow image -> (gray, alpha) of `size` (width, height), each pixel the mean of a
    factor x factor block (fewer along a side shorter than factor), converted a tile at a time.

    With transparency, gray is averaged weighted by alpha, sum(alpha * gray) / sum(alpha), so
    that putting the result on a background (composite_alpha) gives the mean of the blocks put
    on it; alpha is None when it is opaque everywhere.
    """
    width, height = size
    block_y, block_x = min(factor, image.size[1] // height), min(factor, image.size[0] // width)
    n = block_y * block_x                  # pixels averaged into one
    transparent, largest = has_transparency(image), 255.0
    deep = image.mode.startswith("I") or image.mode == "F"   # 16 or 32 bits a pixel
    if deep:  # scaled by the largest value the file's bit depth allows
        high = image.getextrema()[1]
        largest = 65535.0 if image.mode.startswith("I;16") or high > 255 else 255.0
        largest = max(1.0, float(high)) if image.mode == "F" else largest

    if transparent and n > 1 and image.mode in ("RGBA", "LA") and image.getextrema()[-1][0] > 252:
        transparent = False   # opaque everywhere (alpha above 0.99): its luma, rounded to 8 bits, averaged
    gray = np.empty((height, width), np.float32)
    alpha, weighted = (np.empty_like(gray), np.empty_like(gray)) if transparent else (None, None)
    opaque = True
    # Tiles of about a megapixel of the image at a time (a tile of a very wide image is a part
    # of its rows, not all of them).
    cols = min(width, max(1, 2 ** 20 // n))
    rows = max(1, 2 ** 20 // (cols * n))
    for top in range(0, height, rows):
        for left in range(0, width, cols):
            out = np.s_[top:min(height, top + rows), left:min(width, left + cols)]
            tile = image.crop((out[1].start * block_x, out[0].start * block_y,
                               out[1].stop * block_x, out[0].stop * block_y))
            if n == 1:            # every pixel kept
                gray[out], tile_alpha = gray_and_alpha(tile, largest)
                if transparent:
                    alpha[out] = tile_alpha
                    opaque = opaque and tile_alpha.min() > 0.99   # opaque alpha: no information
            elif deep:            # 16 or 32 bits: the block means in floats
                tile_gray, (tile_rows, tile_cols) = gray_and_alpha(tile, largest)[0], gray[out].shape
                gray[out] = tile_gray.reshape(tile_rows, block_y, tile_cols, block_x).mean(axis=(1, 3))
            elif transparent:     # 8-bit colour: block sums of luma, alpha and alpha x luma
                rgba = np.asarray(tile.convert("RGBA")).astype(np.uint32)
                luma_1000 = 299 * rgba[..., 0] + 587 * rgba[..., 1] + 114 * rgba[..., 2]  # luma x 1000, exact
                gray[out] = block_sums(luma_1000, block_y, block_x) / np.float32(255_000 * n)
                alpha[out] = block_sums(rgba[..., 3], block_y, block_x) / np.float32(255 * n)
                weighted[out] = block_sums(luma_1000 * rgba[..., 3], block_y, block_x) / np.float32(255 * 255_000 * n)
                opaque = opaque and rgba[..., 3].min() > 252                  # alpha above 0.99
            else:                 # 8-bit gray
                sums = block_sums(np.asarray(tile.convert("L")), block_y, block_x)
                gray[out] = sums / np.float32(255 * n)
    if not transparent or opaque:
        return gray, None
    if n > 1:   # a block transparent throughout: its gray does not matter
        gray = np.where(alpha > 0, weighted / np.maximum(alpha, 1e-12), 0.0).astype(np.float32)
    return gray, alpha


def composite_alpha(gray, alpha):
    """Put a partly transparent image on an opaque background of the right colour.

    A digit drawn on a transparent canvas may be white or black; the colour stored in the
    transparent pixels is meaningless (often black). If the opaque pixels all have about the
    same gray value, they ARE the digit, so the background must be the opposite colour:
    black ink goes on white, white ink on black. Otherwise the opaque part has its own paper,
    and the transparent part becomes that paper's colour (the majority of opaque pixels).
        result = alpha * gray + (1 - alpha) * background
    """
    opaque = gray[alpha > 0.5]
    if opaque.size == 0:  # nothing opaque at all: an empty image
        return np.zeros_like(gray)
    low, middle, high = np.percentile(opaque, [5, 50, 95])
    background = 1.0 - middle if high - low < 0.25 else middle
    return (alpha * gray + (1.0 - alpha) * background).astype(np.float32)


def shrink_by_block_mean(image, factor):
    """Shrink an image by an integer factor: each output pixel is the mean of a factor x factor block.

    Averaging (not skipping) pixels is what keeps thin lines visible and noise low.
    """
    if factor <= 1:
        return image
    height, width = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: height * factor, : width * factor].reshape(height, factor, width, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def box_blur(image, radius):
    """Mean over a (2*radius+1) x (2*radius+1) square around each pixel, the border mirrored.

    Computed with cumulative sums, so the cost does not depend on the radius.
    """
    size = 2 * radius + 1
    # Mirror the image at its border: repeating the edge pixels instead would double a line
    # lying on the border and make it look stronger than it is.
    padded = np.pad(image.astype(np.float32), radius, mode="reflect")
    sums = np.cumsum(np.pad(padded, ((1, 0), (0, 0))), axis=0)
    padded = (sums[size:] - sums[:-size]) / size  # mean over `size` rows
    sums = np.cumsum(np.pad(padded, ((0, 0), (1, 0))), axis=1)
    return (sums[:, size:] - sums[:, :-size]) / size  # ... then over `size` columns


def max_filter(image, radius):
    """Gray-level dilation: each pixel becomes the maximum over a disk-like area of given radius.

    Repeated 3x3 maxima, alternating a square and a plus-shaped neighbourhood, grow an octagon:
    a good stand-in for a round pen tip, so strokes thicken equally in every direction.
    """
    result = image
    for step in range(int(radius)):
        padded = np.pad(result, 1)  # zero (no ink) outside the image
        rows = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])  # 3 rows at once
        if step % 2 == 0:  # 3x3 square
            result = np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])
        else:  # plus sign: up, down, left, right
            result = np.maximum(rows[:, 1:-1], np.maximum(padded[1:-1, :-2], padded[1:-1, 2:]))
    return result


def filter_block_grid(grid, radius, reduce, extrapolate=True):
    """Maximum (reduce=np.max) or minimum (np.min) over the (2 radius + 1)^2 blocks around each block.

    Beyond the border the lighting is assumed to continue its trend ("odd" reflection
    extrapolates linearly), so that a plain gradient passes through unchanged; with
    extrapolate=False the border blocks are simply repeated.
    """
    size = 2 * radius + 1
    if extrapolate:
        padded = np.pad(grid, radius, mode="reflect", reflect_type="odd")
    else:
        padded = np.pad(grid, radius, mode="edge")
    return reduce(np.lib.stride_tricks.sliding_window_view(padded, (size, size)), axis=(2, 3))


def block_percentiles(paper, blocks_per_side=32, percentile=90):
    """Cut the image into about blocks_per_side x blocks_per_side square blocks (at least 16x16
    pixels for a stable percentile; a tiny image gets blocks of a quarter of its side, at least 2
    pixels) and return (grid, block): the given percentile of every block, and the block size.
    """
    height, width = paper.shape
    longer = max(height, width)
    block = max(2, int(np.ceil(longer / blocks_per_side)), min(16, longer // 4))
    rows, cols = int(np.ceil(height / block)), int(np.ceil(width / block))
    padded = np.pad(paper, ((0, rows * block - height), (0, cols * block - width)), mode="symmetric")
    blocks = padded.reshape(rows, block, cols, block).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    return np.percentile(blocks, percentile, axis=2).astype(np.float32), block


def run_along_the_edge(labels, count):
    """For each of `count` labelled pieces (see label_components): how many of the pixels on the
    picture's border it covers."""
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.bincount(edge[edge >= 0], minlength=count)


def narrow_strips_along_the_edge(mask, outside, min_run, band=0.1):
    """What is left of the table after outside_the_page: ink along the edge of the picture or page.

    Strips of table too narrow for a block of their own, and the edge of the page beside the
    blocks found by outside_the_page. A piece of the mask is such a strip when it lies wholly
    within `band` (a fraction of the shorter side) of the picture's edge or of `outside`, and runs
    along the picture's edge for at least min_run pixels or touches `outside`. A digit stroke that
    touches the edge (a tight crop, a tail running out of the picture) belongs to a piece that
    reaches far into the picture: it stays.
    """
    width_of_band = int(np.ceil(band * min(mask.shape)))
    near_edge = max_filter(outside.astype(np.float32), width_of_band // 2) > 0
    near_edge[:width_of_band] = near_edge[-width_of_band:] = True
    near_edge[:, :width_of_band] = near_edge[:, -width_of_band:] = True
    labels, count = label_components(mask)
    table = run_along_the_edge(labels, count) >= min_run
    next_to_outside = labels[(max_filter(outside.astype(np.float32), 1) > 0) & (labels >= 0)]
    table[next_to_outside] = True
    table[labels[~near_edge & (labels >= 0)]] = False  # a piece reaching into the picture is no strip
    return np.append(table, False)[labels]  # per pixel (label -1, no piece: the appended False)


def outside_the_page(paper, darker=0.55, min_run=0.15):
    """The pixels around the page: the table or floor a sheet of paper lies on.

    A photo of a page often shows the table along one or more of its edges. Against the paper it
    is a huge patch of "ink" that would be taken for the digit. On the block grid of brightness
    (block medians, see block_percentiles) it gives itself away: blocks far darker (below `darker`
    times) than the brightest paper within 4 blocks, with the blocks about as dark that join
    them, which together run along the picture's edge for at least `min_run` of its shorter
    side. Lighting never darkens a page that abruptly, and a thick stroke does not run along the
    edge. The region is widened by one block, so that it also covers the page's edge, where the
    table first looks like ink.
    (A strip of table too narrow for a block of its own is found later, on the ink mask.)
    Returns a boolean mask of the image's shape (all False for a picture of the page alone).
    """
    height, width = paper.shape
    grid, block = block_percentiles(paper, percentile=50)  # the median: a grainy table stays dark
    dark = grid < darker * filter_block_grid(grid, 4, np.max, extrapolate=False)
    if not dark.any() or min(grid.shape) < 8:  # a tiny picture is a cut-out digit, not a page
        return np.zeros(paper.shape, dtype=bool)
    # Farther from the page, "far darker than the paper nearby" no longer holds, so the blocks
    # about as dark (at most 1.25 times the median) as the very dark ones join them: the rest of
    # the table. (Very dark: below 0.4 times the paper nearby; no shadow darkens a page so much.)
    region = dark.copy()
    very_dark = grid < 0.4 * filter_block_grid(grid, 4, np.max, extrapolate=False)
    if very_dark.any():
        region |= grid <= 1.25 * np.median(grid[very_dark])
    labels, count = label_components(region)
    long_run = run_along_the_edge(labels, count) * block >= min_run * min(height, width)
    long_run[np.setdiff1d(np.arange(count), labels[dark])] = False  # a piece must hold a dark block
    table = np.append(long_run, False)[labels]  # per block (label -1, no piece: the appended False)
    table = max_filter(table.astype(np.float32), 1) > 0
    table = table.repeat(block, axis=0).repeat(block, axis=1)[:height, :width]
    if table.mean() > 0.98:  # next to no page left: this is no photo of a page on a table
        return np.zeros(paper.shape, dtype=bool)
    return table


def estimate_background(paper, blocks_per_side=32, closing_radius=2, percentile=90):
    """Estimate the brightness of the (light) paper under the ink, smoothly across the image.

    Uneven lighting and shadows make the paper darker in places; the digit is only "ink" where it
    is darker than the paper AROUND it. Steps:
      1. Cut the image into about blocks_per_side x blocks_per_side blocks and take the 90th
         percentile of each block: a paper value even when a stroke passes through the block.
      2. A block completely covered by a thick stroke has no paper in it; a "closing" of the block
         grid (maximum over 5x5 blocks, then minimum over 5x5 blocks) replaces such small dark
         islands by their surroundings, yet keeps the edge of a large shadow where it is; an
         "opening" (minimum, then maximum over 3x3 blocks) removes single bright blocks.
         (Blocks have at least 16x16 pixels for a stable percentile; a tiny image gets
         blocks of a quarter of its side, at least 2 pixels.)
      3. Interpolate the block values bilinearly back to a smooth full-size background.
    """
    height, width = paper.shape
    grid, block = block_percentiles(paper, blocks_per_side, percentile)
    raw_grid, (rows, cols) = grid, grid.shape

    # A closing (max, then min) fills dark islands of the block grid: blocks covered by a thick
    # stroke. An opening over 3x3 blocks (min, then max) then removes single bright blocks: one
    # block brighter than all its neighbours (glare, a cluster of white specks) is not lighting.
    if closing_radius > 0 and min(rows, cols) > 1:
        grid = filter_block_grid(filter_block_grid(grid, closing_radius, np.max), closing_radius, np.min)
        grid = filter_block_grid(filter_block_grid(grid, 1, np.min), 1, np.max)
    # The border extrapolation must not invent paper brighter (or darker) than any block shows:
    # next to a block covered by a stroke it would, and a tightly cropped digit, which touches
    # its border, would then get ink all over its paper.
    grid = np.clip(grid, raw_grid.min(), raw_grid.max())

    # Bilinear interpolation between block centres, first along rows, then along columns.
    # Between the last block centre and the border the trend is extended (t < 0 or t > 1),
    # so a lighting gradient does not flatten out there and look like a band of ink.
    def interpolation(n_pixels, n_blocks):
        position = (np.arange(n_pixels) + 0.5) / block - 0.5
        first = np.clip(np.floor(position).astype(int), 0, max(n_blocks - 2, 0))
        second = np.minimum(first + 1, n_blocks - 1)
        return first, second, (position - first).astype(np.float32)

    first, second, t = interpolation(height, rows)
    grid = grid[first] * (1 - t)[:, None] + grid[second] * t[:, None]  # (height, cols)
    first, second, t = interpolation(width, cols)
    return grid[:, first] * (1 - t) + grid[:, second] * t  # (height, width)


def remove_background(gray, light_background):
    """Ink strength in [0, 1] for every pixel: 0 = paper, 1 = black ink on white paper.

    With light paper the recorded brightness is (illumination x reflectance), so dividing by the
    local paper brightness cancels the illumination:
        ink = 1 - gray / background
    A digit on a dark background is first turned into one on a light background (1 - gray), so
    the same formula serves both. For an MNIST image (white on black) ink equals the input.
    """
    paper = gray if light_background else 1.0 - gray
    background = estimate_background(paper)
    ink = 1.0 - paper / np.maximum(background, 1e-3)
    return np.clip(ink, 0.0, 1.0).astype(np.float32)


def decide_polarity(gray):
    """True when the background is light (dark ink on paper), False when it is dark.

    With the right answer the ink map (see remove_background) is sparse, a few strokes on a clean
    background; with the wrong one the background itself becomes "ink", a dense map (density:
    mean ink relative to the strongest, 3x3-blurred, ink). So the sparser reading wins, by a
    margin that the background's gray b sets. Paper is the usual case: with b at least mid-gray
    the dark reading must be 3 times sparser to win; the darker b below that, the less it must
    win by, until a black background (b = 0) asks the same of the light reading:
        light  when  density(read as dark) > 3^(1 - 4 min(b, 0.5)) * density(read as light).
    b is the median gray of the picture's border or of its four corners, whichever is darker: a
    tightly cropped digit covers much of the border, or a corner, but seldom both. A dark border
    that is the table around a light page (outside_the_page) counts as white.
    (Measured, density read as dark / read as light: photos of paper, borders from 0.43 (gray
    paper in dim light) up, 1.0 to 22; USPS digits cropped tightly, black on white 0.9 to 6 and
    white on black 0.2 to 1.0; white digits on transparent PNGs up to 0.27; a page on a table
    0.8 to 4; blank paper, border 0.47-0.8, 0.5 to 4.4. The median of the whole picture is no
    guide: a bold digit cropped tightly covers most of it.)
    """
    def density(ink):
        return ink.mean() / max(float(box_blur(ink, 1).max()), 1e-6)

    dark_ink = remove_background(gray, False)
    if dark_ink.max() < 0.12:  # read as a dark background, the image has no ink at all: paper
        return True
    light_ink = remove_background(gray, True)
    k = max(1, round(0.1 * min(gray.shape)))  # corners: a tenth of the shorter side each way
    corners = np.concatenate([gray[:k, :k], gray[:k, -k:], gray[-k:, :k], gray[-k:, -k:]],
                             axis=None)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    b = min(float(np.median(border)), float(np.median(corners)))
    if b < 0.5 and outside_the_page(gray).any():  # from 0.5 up, b = 1 would change nothing
        b = 1.0
    return bool(density(dark_ink) > 3.0 ** (1.0 - 4.0 * min(b, 0.5)) * density(light_ink))


def noise_floor_and_peak(smooth_ink):
    """How strong is the paper noise, and how strong is the strongest ink? (smooth_ink: the ink
    strengths of an image, or of some of its pixels.)

    Ink and printed lines only ever ADD ink strength, so the weakest pixels are pure paper, and
    their spread measures the paper noise. The very weakest are used (5th and 15th percentiles):
    the lines of dense squared paper, with their blurred edges, can cover more than half of a
    photo. For Gaussian noise these percentiles lie 1.645 and 1.036 standard deviations below
    the mean, hence
        sigma = (p15 - p5) / 0.609,   paper mean = p15 + 1.036 sigma
    Returns (paper, sigma, floor, peak), where floor is an ink strength that paper noise
    practically never reaches (paper mean + 6 sigma) and peak the strongest ink.
    """
    values = np.ravel(smooth_ink)
    p5, p15 = np.percentile(values[::4], [5, 15])  # every 4th pixel is plenty
    sigma = float(p15 - p5) / 0.609
    paper = float(p15) + 1.036 * sigma
    floor = paper + max(6.0 * sigma, 0.03)
    return paper, sigma, floor, float(values.max())


def otsu_threshold(values, bins=64):
    """Otsu's threshold: the value that splits `values` into two groups with the largest
    between-group variance  w0 * w1 * (mean0 - mean1)^2  (w = fraction of values in a group).
    """
    # float64: values of a clean drawing can differ by less than float32 bins can resolve.
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)  # number of values at or below each candidate split
    w1 = w0[-1] - w0
    sum0 = np.cumsum(counts * centres)
    mean0 = sum0 / np.maximum(w0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[1:][np.argmax(between)])


def shear_columns(mask, shift):
    """Move column x of a boolean image down by shift[x] rows (shift >= 0), so that lines tilted
    by the matching angle become exactly horizontal. Output height: height + shift.max()."""
    ys, xs = np.nonzero(mask)
    sheared = np.zeros((mask.shape[0] + shift.max(), mask.shape[1]), dtype=bool)
    sheared[ys + shift[xs], xs] = True
    return sheared


def unshear_columns(sheared, shift, height):
    """Undo shear_columns: read every column back from where it was moved to."""
    rows = np.arange(height)[:, None] + shift[None, :]  # (height, width)
    return sheared[rows, np.arange(sheared.shape[1])]


def find_horizontal_lines(mask, max_angle_degrees=5.0, min_coverage=0.5, max_thickness=0.03, widened=2):
    """Find long, thin, nearly horizontal lines in a boolean ink mask (ruled or squared paper).

    1. Find the tilt: for each candidate angle, shift every column by x * tan(angle) ("shear")
       and count mask pixels per row. At the right angle each line falls into one or two rows,
       so the row counts are most peaked: the largest sum of squared counts.
    2. In the sheared image a row belongs to a line when mask pixels (within +-1 row) cover at
       least min_coverage of its width. A run of such rows is a candidate line if it is thin
       compared with its length (at most max_thickness times it: a stroke 2 pixels wide in a
       28-pixel image is no printed line). printed_lines_only then compares the candidates.
    Returns (shift, runs): the column shifts of the tilt and a list of candidate lines
    (first_row, end_row, fraction of the width covered, thickness) in sheared coordinates.
    """
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    best_score, shift = -1.0, np.zeros(width, dtype=int)
    if len(ys) < width * min_coverage:  # not even one line's worth of pixels
        return shift, []
    for angle in np.radians(np.linspace(-max_angle_degrees, max_angle_degrees, 41)):
        candidate = np.round(np.arange(width) * np.tan(angle)).astype(int)
        candidate -= candidate.min()
        counts = np.bincount(ys + candidate[xs]).astype(np.float64)
        score = float((counts**2).sum())
        if score > best_score:
            best_score, shift = score, candidate

    sheared = shear_columns(mask, shift)
    band = sheared.copy()
    band[1:] |= sheared[:-1]
    band[:-1] |= sheared[1:]
    # A sheared row lies inside the image only for some columns (a tilted line near the border
    # leaves the image): coverage is measured among those, where there are enough of them.
    inside = np.zeros(len(sheared) + 1, dtype=int)
    np.add.at(inside, shift, 1)
    np.add.at(inside, shift + height, -1)
    inside = np.cumsum(inside)[:-1]
    covered = band.sum(axis=1)  # pixels per sheared row
    coverage = np.where(inside >= 0.1 * width, np.minimum(covered / np.maximum(inside, 1), 1.0), 0.0)

    change = np.diff(np.concatenate(([0], (coverage >= min_coverage).astype(int), [0])))
    starts, ends = np.nonzero(change == 1)[0], np.nonzero(change == -1)[0]
    length = np.array([covered[start:end].max() for start, end in zip(starts, ends)], dtype=float)
    fraction = np.array([coverage[start:end].max() for start, end in zip(starts, ends)])
    thickness = ends - starts - 2  # -2: the +-1 row band widened every line by 2 rows
    # (+ widened: a 3x3 smoothing before thresholding widens every line by 2 pixels.)
    thin = thickness <= max_thickness * np.maximum(length, width / 2) + widened
    runs = [(start, end, cover, thick) for start, end, cover, thick
            in zip(starts[thin], ends[thin], fraction[thin], thickness[thin])]
    return shift, runs


def printed_lines_only(runs):
    """Keep the runs that look like printed lines: alike each other (about as completely covering
    the page and as thick: a long straight digit stroke is shorter or thicker than printed lines)
    and at least two of them (a ruling has many lines; one long stroke is not a ruling). A single
    line counts only when it crosses the whole picture (90 % of it): a margin line, a fold.
    """
    if len(runs) == 0:
        return []
    fraction = np.array([run[2] for run in runs])
    thickness = np.array([run[3] for run in runs])
    if len(runs) == 1:
        return runs if fraction[0] >= 0.9 else []
    alike = (fraction >= 0.7 * fraction.max()) & (thickness <= 2 * np.median(thickness) + 1)
    return [run for run, keep in zip(runs, alike) if keep] if alike.sum() >= 2 else []


def extent_of_largest_piece(mask):
    """(height, width) of the bounding box of the largest connected piece of a mask (0, 0 if empty)."""
    labels, count = label_components(mask)
    if count == 0:
        return 0, 0
    ys, xs = np.nonzero(labels == np.argmax(np.bincount(labels[labels >= 0])))
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def remove_grid_lines(mask, reach=3, reach_past=1.5, widened=2):
    """Delete the printed lines of squared or ruled paper, but keep the digit strokes crossing them.

    Horizontal lines are found by find_horizontal_lines, vertical ones by the same function on the
    transposed mask. Printed lines run across the page, far past the digit: a family of lines is
    only taken for printed lines when its lines are at least `reach_past` times as long as the
    largest piece of ink left without them (the digit) in their direction. (1.5: the generators'
    digits span at most half the page; the two sides of a tightly cropped 0, or the bar and tail
    of a 5, are no longer than the rest of their digit.)
    All line pixels are removed; then, for every line, the removed pixels are put back in the
    columns where the remaining ink continues on both sides of the line (within `reach` pixels):
    that is a stroke crossing the line, not the line itself. Slanted strokes continue a few
    columns further on the other side, so both sides are widened by the line's thickness first.
    Returns (mask without lines, mask of removed line pixels).
    """
    families = []  # (transposed?, shift, runs, line pixels) for horizontal and vertical lines
    for transposed in (False, True):
        oriented = mask.T if transposed else mask
        shift, runs = find_horizontal_lines(oriented, widened=widened)
        runs = printed_lines_only(runs)
        line_rows = np.zeros((oriented.shape[0] + shift.max(), oriented.shape[1]), dtype=bool)
        for start, end, _, _ in runs:
            line_rows[start:end] = True
        found = unshear_columns(line_rows, shift, oriented.shape[0]) & oriented
        families.append((transposed, shift, runs, found.T if transposed else found))
    if not any(runs for _, _, runs, _ in families):
        return mask, np.zeros_like(mask)

    # Only the families reaching far past the rest of the ink are printed lines.
    rest_height, rest_width = extent_of_largest_piece(mask & ~(families[0][3] | families[1][3]))
    printed = []
    for transposed, shift, runs, found in families:
        length = max(run[2] for run in runs) * (mask.shape[0] if transposed else mask.shape[1]) if runs else 0
        if runs and length >= reach_past * (rest_height if transposed else rest_width):
            printed.append((transposed, shift, runs, found))
    lines = np.zeros_like(mask)
    for _, _, _, found in printed:
        lines |= found

    remaining = mask & ~lines
    restored = np.zeros_like(mask)
    for transposed, shift, runs, _ in printed:
        oriented = remaining.T if transposed else remaining
        sheared = shear_columns(oriented, shift)
        keep = np.zeros_like(sheared)
        for start, end, _, _ in runs:
            above = sheared[max(0, start - reach) : start].any(axis=0)
            below = sheared[end : end + reach].any(axis=0)
            widen = np.ones(2 * min(end - start, (len(above) - 1) // 2) + 1)  # at most the width
            crossing = (np.convolve(above, widen, mode="same") > 0) & (np.convolve(below, widen, mode="same") > 0)
            keep[start:end, crossing] = True
        found = unshear_columns(keep, shift, oriented.shape[0])
        restored |= found.T if transposed else found
    restored &= lines
    return remaining | restored, lines & ~restored


def label_components(mask):
    """Connected components of a boolean mask (8-connectivity), in pure NumPy.

    Every ink pixel starts as a tree of its own, its number its label. Each round, every tree's
    root takes the smallest label found next to any of its pixels ("hooking": trees that touch
    are joined under the smaller root), and then every pixel follows the chain of labels up to
    its root ("pointer jumping"). When a round changes nothing, all pixels of a component carry
    its smallest pixel number. Joining whole trees at once takes a few rounds even along a long
    spiral stroke, where passing the smallest label on one pixel per round would take hundreds.
    Returns (labels, count): labels is an int array, -1 for background, 0..count-1 for components.
    """
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    index = np.full((height + 2, width + 2), -1)  # padded so every pixel has 8 neighbours
    index[ys + 1, xs + 1] = np.arange(len(ys))
    own = np.arange(len(ys))
    neighbours = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                neighbour = index[ys + 1 + dy, xs + 1 + dx]
                neighbours.append(np.where(neighbour >= 0, neighbour, own))  # no neighbour: self
    neighbours = np.stack(neighbours)  # (8, n)

    label = own.copy()
    while True:
        before = label.copy()
        smallest = np.minimum(label, label[neighbours].min(axis=0))  # per pixel, (n,)
        np.minimum.at(label, label, smallest)  # hooking: root[label[i]] = min(it, smallest[i])
        while True:                            # pointer jumping, until every pixel holds a root
            root = label[label]
            if np.array_equal(root, label):
                break
            label = root
        if np.array_equal(label, before):
            break
    unique, compact = np.unique(label, return_inverse=True)
    labels = np.full((height, width), -1)
    labels[ys, xs] = compact
    return labels, len(unique)


def piece_boxes(labels, count, ink):
    """Bounding boxes (top, bottom, left, right, inclusive) and ink (sum of strength) of each of
    the `count` labelled pieces (see label_components), as arrays of length count."""
    ys, xs = np.nonzero(labels >= 0)
    which = labels[ys, xs]
    mass = np.bincount(which, weights=ink[ys, xs], minlength=count)
    top, left = np.full(count, 1 << 30), np.full(count, 1 << 30)
    bottom, right = np.full(count, -1), np.full(count, -1)
    np.minimum.at(top, which, ys)
    np.minimum.at(left, which, xs)
    np.maximum.at(bottom, which, ys)
    np.maximum.at(right, which, xs)
    return top, bottom, left, right, mass


def keep_digit_components(mask, ink, min_share=0.03, reach=0.25):
    """Keep the connected pieces that form the digit; drop specks, dirt and distant marks.

    Slivers along the image border are dropped first. Of the rest, the piece with the most ink
    (sum of ink strength) is surely part of the digit. Other pieces
    belong to it when they carry at least min_share of its ink (a speck does not) and lie near it:
    their box overlaps the largest piece's box widened by `reach` times its longer side (the
    separate bar of a 5, a 4 drawn in two strokes, a pencil line with gaps).
    Returns the boolean mask of the kept pixels (all False if the mask is empty).
    """
    labels, count = label_components(mask)
    if count == 0:
        return np.zeros_like(mask)
    top, bottom, left, right, mass = piece_boxes(labels, count, ink)

    # A sliver along the image border (a printed line leaving the picture, the edge of the page)
    # is long and thin and runs along that border; a digit never does. A 1 reaching from the top
    # to the bottom of a tightly cropped picture is no sliver, even when it also touches a side
    # (a line across the whole picture is remove_grid_lines's matter).
    tall, wide = bottom - top + 1, right - left + 1
    height, width = mask.shape
    along_top_or_bottom = ((top == 0) | (bottom == height - 1)) & (wide >= 6 * tall) & (wide < width)
    along_left_or_right = ((left == 0) | (right == width - 1)) & (tall >= 6 * wide) & (tall < height)
    mass[along_top_or_bottom | along_left_or_right] = 0.0
    if mass.max() <= 0:
        return np.zeros_like(mask)
    largest = int(np.argmax(mass))
    margin = reach * max(bottom[largest] - top[largest], right[largest] - left[largest])
    near = (
        (bottom >= top[largest] - margin) & (top <= bottom[largest] + margin)
        & (right >= left[largest] - margin) & (left <= right[largest] + margin)
    )
    keep = near & (mass > 0) & (mass >= min_share * mass[largest])
    return keep[np.maximum(labels, 0)] & (labels >= 0)


def strokes_on_lines(smooth_ink, digit, lines, sigma):
    """The pixels of `lines` that are really the digit: a pen stroke running along a printed line.

    remove_grid_lines deletes such a stroke together with the line. But a pen is usually much
    darker than the printed lines: where the digit's typical ink is clearly stronger than the
    lines' (by more than 6 sigma of the paper noise), line pixels nearer in strength to the digit
    than to the lines, and connected to the digit, are given back: they continue its strokes.
    (Pencil as faint as the lines cannot be told apart from them this way: nothing is returned.)
    """
    if not digit.any() or not lines.any():
        return np.zeros_like(lines)
    line_ink, digit_ink = np.median(smooth_ink[lines]), np.median(smooth_ink[digit])
    if digit_ink - line_ink <= 6 * sigma:
        return np.zeros_like(lines)
    strong = lines & (smooth_ink > (line_ink + digit_ink) / 2)
    labels, _ = label_components(digit | strong)
    touching_digit = np.isin(labels, np.unique(labels[digit]))
    return strong & touching_digit


def crop_to_ink(image):
    """Cut away all-zero rows and columns around the ink (returns an empty array if no ink)."""
    rows = np.nonzero(image.any(axis=1))[0]
    cols = np.nonzero(image.any(axis=0))[0]
    if len(rows) == 0:
        return image[:0, :0]
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def estimate_stroke_width(binary):
    """Mean stroke width of a boolean drawing, from its area A and perimeter P.

    A stroke of length L and width w has A = L * w and P ~ 2 L, so  w ~ 2 A / P.
    The perimeter is counted as the number of pixel edges between ink and no ink.
    """
    padded = np.pad(binary, 1)
    perimeter = (padded[1:] != padded[:-1]).sum() + (padded[:, 1:] != padded[:, :-1]).sum()
    return 2.0 * binary.sum() / max(int(perimeter), 1)


def normalise_stroke_width(cropped, relative_width=0.099):
    """Thicken thin strokes so that, relative to the digit's size, they are as wide as MNIST's.

    A ballpoint line 3 pixels wide in a 300-pixel digit becomes 0.2 pixels after scaling to 20
    pixels: a faint ghost. MNIST strokes are about relative_width times the digit's longer side.
    Dilating by r pixels makes a stroke w + 2r wide and the digit L + 2r long, so we choose
        (w + 2r) / (L + 2r) = relative_width  ->  r = (relative_width * L - w) / (2 (1 - relative_width))
    Strokes within MNIST's own range (at least half its median width) are left alone: MNIST
    has thin and thick writers too, and a 28x28 digit would change a lot by even 1 pixel.
    """
    width = estimate_stroke_width(cropped > 0.5)
    longer = max(cropped.shape)
    radius = int(round((relative_width * longer - width) / (2 * (1 - relative_width))))
    if radius < 1 or width >= 0.5 * relative_width * longer:
        return cropped
    return max_filter(np.pad(cropped, radius), radius)


def area_weights(n_in, n_out):
    """(n_out, n_in) matrix for anti-aliased resizing along one axis.

    Output pixel i covers the input interval [i * s, (i + 1) * s) with s = n_in / n_out; its value
    is the average of the input pixels weighted by how much of each lies in that interval (box
    filter). When shrinking, no input pixel is skipped, so thin strokes never vanish or flicker.
    """
    scale = n_in / n_out
    start = np.arange(n_out)[:, None] * scale  # (n_out, 1)
    pixel = np.arange(n_in)[None, :]  # (1, n_in)
    overlap = np.minimum(start + scale, pixel + 1) - np.maximum(start, pixel)
    return (np.clip(overlap, 0, None) / scale).astype(np.float32)


def resize_area(image, out_height, out_width):
    """Resize with area averaging: (out_h, h) @ (h, w) @ (w, out_w) -> (out_h, out_w)."""
    return area_weights(image.shape[0], out_height) @ image @ area_weights(image.shape[1], out_width).T


def fit_in_box(image, box=20):
    """Scale so the longer side is `box` pixels, keeping the aspect ratio (a 1 stays thin)."""
    height, width = image.shape
    scale = box / max(height, width)
    return resize_area(image, max(1, round(height * scale)), max(1, round(width * scale)))


def center_by_mass(digit, size=28, centre=14.0):
    """Place `digit` in a size x size black field with its centre of mass at (centre, centre).

    Centre of mass: (sum_yx y * I[y, x] / sum I, sum_yx x * I[y, x] / sum I). The digit moves by
    whole pixels, as far as possible without cutting it off at the border.
    """
    height, width = digit.shape
    total = digit.sum()
    mass_y = (digit.sum(axis=1) * np.arange(height)).sum() / total
    mass_x = (digit.sum(axis=0) * np.arange(width)).sum() / total
    top = int(np.clip(round(centre - mass_y), 0, size - height))
    left = int(np.clip(round(centre - mass_x), 0, size - width))
    field = np.zeros((size, size), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return field


def find_the_digit(ink, paper, pieces_found=None):
    """The pixels that make up the digit in an ink map (from remove_background) of a picture whose
    light background `paper` is given (the gray image itself, or its negative).

    Returns (mask, set_aside, floor, reason): the digit's pixels (None when there is no digit, and
    then `reason` says why); the pixels set aside as printed lines or as the table around the
    page; and the noise floor, an ink strength that paper noise practically never reaches.
    pieces_found: a boolean array of the ink's shape, if given, receives every piece of ink
    found, the digit's and all others (specks, other digits), lines and table set aside.
    """
    if pieces_found is None:
        pieces_found = np.zeros(ink.shape, dtype=bool)
    # JPEG noise and paper grain average out over 3x3 pixels, strokes do not. A picture made on a
    # computer (a drawing, a digit cut out of a data set) has no noise to average: most of its
    # neighbouring pixels are exactly equal. It stays sharp, and so does a picture under 40 px:
    # the blur widens strokes by 2 px, and MNIST's are a tenth of the digit, 4 px at 40 px.
    # (A picture one pixel wide has no neighbours side by side: it stays sharp as well.)
    noiseless = ink.shape[1] < 2 or np.mean(np.diff(ink, axis=1) == 0) > 0.5 or max(ink.shape) < 40
    smooth = ink if noiseless else box_blur(ink, 1)
    nothing = np.zeros(ink.shape, dtype=bool)

    # Photo: the table around the page is set aside, and the noise and the ink are measured on
    # the page alone. If the page then holds no ink at all, the "table" was the digit itself,
    # drawn thick right up to the edges of the picture, and it stays.
    outside = outside_the_page(paper)
    paper_ink, sigma, floor, peak = noise_floor_and_peak(smooth[~outside])
    if peak <= floor and outside.any():
        outside = nothing
        paper_ink, sigma, floor, peak = noise_floor_and_peak(smooth)
    # The test of "is there anything at all": ink that paper noise cannot explain, at least 10
    # standard deviations of the noise above the paper (the strongest of the ~10^5 pixels of pure
    # noise lies about 4.5 above), and at least 12 % darker than the paper (a uniform picture has
    # no noise at all to measure against; the faintest pencil on the darkest paper of the test
    # file's photos is 15 % darker than the paper).
    if peak - paper_ink < max(10 * sigma, 0.12):
        return None, outside, floor, "no ink stands out from the background"

    # Everything above the noise floor may be ink or printed lines. Photo: lines are found on this
    # generous mask (so that faint lines are found whole); the digit is cut at Otsu's threshold.
    # What is left of the table (strips too narrow for outside_the_page) is found once the lines,
    # which also reach the edge, are gone (unless it is all there is).
    candidates = (smooth > floor) & ~outside
    without_lines, lines = remove_grid_lines(candidates, widened=0 if noiseless else 2)
    strips = narrow_strips_along_the_edge(without_lines, outside, 0.15 * min(ink.shape))
    if (without_lines & ~strips).any():
        outside = outside | strips
        candidates &= ~strips
        without_lines &= ~strips
    if without_lines.any():  # the strongest ink that may be the digit: printed lines are gone
        peak = float(smooth[without_lines].max())
    threshold = min(max(otsu_threshold(smooth[candidates]), floor), floor + 0.5 * (peak - floor))
    pieces = (smooth > threshold) & without_lines
    mask = keep_digit_components(pieces, ink)
    on_lines = strokes_on_lines(smooth, mask, lines, sigma)
    if on_lines.any():
        lines = lines & ~on_lines
        pieces = (smooth > threshold) & (without_lines | on_lines)
        mask = keep_digit_components(pieces, ink)
    set_aside = lines | outside
    pieces_found[:] = pieces  # every piece of ink, for reading a number (section [11b])

    # Nothing but specks left (what printed lines leave where they cross, dust): the largest piece
    # spans under 4 % of the picture's longer side (and under 4 pixels). The smallest digits the
    # generators write, in scans, span about 6 % of it.
    ys, xs = np.nonzero(mask)
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 if len(ys) else 0
    if side < max(4, 0.04 * max(ink.shape)):
        return None, set_aside, floor, "only specks or printed lines, nothing the size of a digit"
    # A small mark cut by the edge of the picture (under a quarter of its longer side) is a piece
    # of something outside it, such as the corner of a grid: a digit lies inside the picture,
    # and a digit cropped tightly to the picture's edge fills most of it.
    height, width = ink.shape
    touches_edge = ys.min() == 0 or xs.min() == 0 or ys.max() == height - 1 or xs.max() == width - 1
    if touches_edge and side < 0.25 * max(height, width):
        return None, set_aside, floor, "only a small piece at the edge of the picture"
    return mask, set_aside, floor, None


def image_to_mnist(gray, alpha=None, max_side=640):  # read_image's 640, for arrays given directly
    """Turn any grayscale image (from read_image) into an MNIST-like (28, 28) float32 input.

    Returns (x28, steps). x28 is None when the image holds no digit (blank, uniform, noise).
    steps keeps the intermediate images for plotting:
      'gray'    the image the steps work on (transparency resolved, large photos shrunk)
      'ink'     ink strength after polarity and background removal, in [0, 1]
      'lines'   pixels set aside as printed lines or as lying outside the page (boolean)
      'mask'    the pixels kept as the digit (boolean)
      'cropped' the cleaned digit cut out, strokes normalised
      'x28'     the result (same as x28)
      'reason'  why no digit was found (a string), only when x28 is None
      'pieces'  every piece of ink found, the digit's and all others (boolean)
      'floor'   the ink strength paper noise stays below (a number)
    """
    if alpha is not None:
        gray = composite_alpha(gray, alpha)
    gray = shrink_by_block_mean(gray, int(np.ceil(max(gray.shape) / max_side)))
    light_background = decide_polarity(gray)
    ink = remove_background(gray, light_background)
    pieces = np.zeros(gray.shape, dtype=bool)
    mask, set_aside, floor, reason = find_the_digit(ink, gray if light_background else 1.0 - gray, pieces)
    steps = {"gray": gray, "ink": ink, "lines": set_aside,
             "mask": np.zeros(gray.shape, dtype=bool) if mask is None else mask,
             "pieces": pieces, "floor": floor}
    if mask is None:
        steps["reason"] = reason
        return None, steps
    x28, cropped = mask_to_mnist(ink, mask, floor)
    steps.update(cropped=cropped, x28=x28)
    return x28, steps


def mask_to_mnist(ink, mask, floor):
    """The MNIST recipe for the digit made of the pixels `mask` of an ink map whose paper noise
    stays below `floor`: returns the (28, 28) input and the cleaned digit cut out ('cropped')."""
    # Stretch the ink so typical stroke pixels (the 75th percentile) become 1, as MNIST strokes
    # are saturated, and paper noise 0; keep a 2-pixel rim around the mask for the soft edges.
    strong = np.percentile(ink[mask], 75)
    cleaned = np.clip((ink - floor) / max(strong - floor, 1e-3), 0.0, 1.0)
    cleaned = cleaned * (max_filter(mask.astype(np.float32), 2) > 0)

    cropped = crop_to_ink(normalise_stroke_width(crop_to_ink(cleaned)))
    digit = fit_in_box(cropped)
    x28 = center_by_mass(digit / digit.max())  # the brightest stroke pixel is 1.0, as in MNIST
    return x28, cropped


def digit_from_filename(name):
    """The true digit encoded at the start of a file name, for scoring a folder of images.

    '7.png' -> 7, '7_anna.jpg' -> 7, 'photos/3-b.jpeg' -> 3; 'img7.png', '12.png' -> None.
    """
    base = str(name).replace("\\", "/").split("/")[-1]  # the file name without its folders
    if base[:1].isdigit() and not base[1:2].isdigit():
        return int(base[0])
    return None


# Fashion-MNIST's images were made another way (Xiao, Rasul, Vollgraf, 2017, arXiv:1708.07747,
# section 2), from product photos of clothes on a light background:
#   1. trim the edges close to the colour of the corner pixels (within 5 % of the largest
#      intensity): what is left is the product, touching the frame on all four sides;
#   2. resize so that the LONGER edge is 28 pixels (not 20, and no centring by mass);
#   3. sharpen with a Gaussian of radius and standard deviation 1.0;
#   4. extend the shorter edge to 28 pixels, the product in the middle;
#   5. negate, so the product is light on black, and keep 8-bit grayscale.
# A network trained on them expects exactly that, so `image_to_fashion` repeats the steps for a
# photo of a garment, a shoe or a bag. Two small differences, both for photos that were not taken
# in a studio: the resizing averages the pixels (resize_area) instead of skipping rows and
# columns, which would keep JPEG noise, and the negation is counted from the background's own
# gray, so a light gray background becomes 0 as Fashion-MNIST's white one did.

FASHION_TRIM_TOLERANCE = 0.05   # the paper's "within 5 % of the maximum possible intensity"


def sharpen(image, sigma=1.0):  # the paper's Gaussian: radius and standard deviation 1.0
    """Unsharp masking: S = I + (I - G I G), the image plus its difference from a Gaussian blur
    of standard deviation sigma, clipped to [0, 1]. Outlines, where I and its blur differ most,
    get stronger; flat areas stay as they are. Outside the frame counts as 0 (black)."""
    G_rows, G_cols = gaussian_matrix(image.shape[0], sigma), gaussian_matrix(image.shape[1], sigma)
    blurred = G_rows @ image @ G_cols        # (h, h) @ (h, w) @ (w, w) -> (h, w); G is symmetric
    return np.clip(2 * image - blurred, 0.0, 1.0).astype(np.float32)


def image_to_fashion(gray, alpha=None):
    """Turn a photo of one product (from read_image) into a Fashion-MNIST-like (28, 28) input.

    Returns (x28, steps) like image_to_mnist: x28 is None when nothing stands out from the
    background; steps holds 'gray', 'cropped' (the trimmed product, light on black) and 'x28',
    or 'reason' when x28 is None. A transparent background is taken as white.
    """
    steps = {}
    if alpha is not None:
        gray = (alpha * gray + (1.0 - alpha)).astype(np.float32)
    steps["gray"] = gray
    background = float(np.median([gray[0, 0], gray[0, -1], gray[-1, 0], gray[-1, -1]]))
    # Measured on a slightly blurred copy: a photo's noise averages out, the product does not.
    differs = np.abs(box_blur(gray, 1) - background) > FASHION_TRIM_TOLERANCE
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if len(rows) == 0:
        steps["reason"] = "nothing stands out from the background"
        return None, steps
    trimmed = gray[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # Negate, measured from the background: background -> 0, black (or white, on a dark
    # background) -> 1.
    if background >= 0.5:
        light = (background - trimmed) / background
    else:
        light = (trimmed - background) / (1.0 - background)
    light = np.clip(light, 0.0, 1.0).astype(np.float32)
    steps["cropped"] = light
    small = np.clip(fit_in_box(light, box=28), 0.0, 1.0)
    height, width = small.shape
    x28 = np.zeros((28, 28), dtype=np.float32)
    top, left = (28 - height) // 2, (28 - width) // 2
    x28[top:top + height, left:left + width] = small
    # Sharpening the 28x28 field is sharpening the product: the border added around it is 0,
    # as sharpen counts outside the frame.
    x28 = sharpen(x28)
    steps["x28"] = x28
    return x28, steps


def prepare_image(gray, alpha=None, dataset="mnist"):
    """The 28x28 input for a network trained on `dataset` (a key of DATASETS): each data set's
    images were made their own way, and a new image must be made the same way."""
    if dataset == "fashion":
        return image_to_fashion(gray, alpha)
    return image_to_mnist(gray, alpha)


def predict_image(gray, alpha, Ws, bs, activation="relu", dataset="mnist"):
    """Single-image prediction, the one path `predict`, `draw`'s pictures and `serve` share:
    prepare the image as the training images were prepared, then run the network.

    Returns (x28, P, steps): the (28, 28) input, the ten probabilities P (10,) and the
    preparation's steps; x28 and P are None when the image holds nothing to recognise, and
    steps["reason"] says why. Needs: prepare_image, predict_proba.
    """
    x28, steps = prepare_image(gray, alpha, dataset)
    if x28 is None:
        return None, None, steps
    P = predict_proba(x28.reshape(1, 784), Ws, bs, activation)[0]  # (1, 784) -> (10,)
    return x28, P, steps


# %% [11b] Reading a number: cutting it into digits
#
# The network reads one digit at a time, so a number must first be cut into its digits. The
# usual few lines (every connected piece of ink is a digit, left to right) break on real
# handwriting in well-known ways: a 5 whose flag was lifted off the paper becomes two digits, and
# so does a 4 drawn in two strokes; two digits that touch become one; a small digit beside a big
# one is thrown away as a speck; the rows of a two-line number get mixed up. cut_into_digits
# works on the pieces of ink that section [11] finds (paper, lines, table and light already dealt
# with), and each of its rules answers one of those failures:
#
#   1. specks      a piece with far less ink than the largest one of its row is dirt, not a digit
#   2. rows        rows come first, decided by the gaps between them: pieces whose heights
#                  overlap form a row, whatever their size, so a row of small digits is a row
#                  beside one of big digits. Rows are read top to bottom, each left to right. A
#                  piece alone at its height that is short beside the row next to it, or lies
#                  just above or below one of its pieces (a digit broken into an upper and a
#                  lower piece), is no row of its own but part of that one
#   3. one digit   in a row, pieces lying above one another (overlapping in x) are one digit: a
#      in pieces   5 and its flag, the two strokes of a 4; a short piece just beside a digit is
#                  one of its strokes (a 7's bar); a short piece on its own is a small digit if
#                  it is tall enough, a dash otherwise
#   4. far away    the digits of a number lie close together: a piece cut by the picture's edge,
#                  lying along it and far from all the others (the edge of the table a
#                  photographed page lies on) is not one of them
#   5. touching    a piece wide enough for two digits may be several digits touching. Where to
#      digits      cut it is decided with the network's help ("recognition-based
#                  segmentation"): every way of cutting it at its columns into parts of a
#                  digit's width is read, and each part gets a score: how strongly the network
#                  recognises it (its largest logit against the network's typical one: it has
#                  never seen two digits at once, and answers a pair weakly even when it is
#                  sure which digit the pair looks most like), how sure it is, whether the part
#                  is too wide or too thin for one digit, whether its ink fills the row's height,
#                  how much ink the cuts went through, and a cost for every digit read. The
#                  cutting whose parts' scores add up to the most wins, the piece whole being
#                  one of the cuttings; dynamic programming finds it without trying them all.
#                  The weights of the score were fitted on strings of MNIST validation digits
#                  (a structured perceptron: docs/measure.py --fit-number-score), never on the
#                  USPS strings the tables measure.
#
# Each digit found is then prepared exactly as a single digit is (mask_to_mnist: crop, stroke
# width, 20 pixels, centre of mass) and read by the same network, so digits of different sizes
# are each read as well as they would be alone. An image in which only one piece is found
# (after rules 1-4) is read exactly as predict_image reads it, unless the piece is at least as
# wide as tall and its best cutting scores clearly more than the piece whole: a single wide
# digit (a flat 2, a 0) looks much like two touching ones.
#
# What each rule is worth, measured by taking it out, and how well numbers are read: the
# number tables of docs/results.md (`docs/measure.py --measure-numbers`).

NUMBER_RULES = {
    "speck_share": 0.03,    # 1: a speck has less ink than 3 % of its row's largest piece (as keep_digit_components)
    "tall": 0.5,            # 3: digit-sized when half as tall as the row's largest piece (flat USPS 2s: 0.62)
    "row_overlap": 0.5,     # 2: one row when the heights overlap by half the shorter piece's
    "stack_gap": 0.75,      # 2: a piece alone at its height, closer than 0.75 of the height to a piece
                            #    above or below it, belongs to that piece's row
    "x_overlap": 0.5,       # 3: one digit when overlapping in x by half the narrower piece's width
    "stroke_gap": 0.15,     # 3: a short piece this close (in row heights) to a digit is its stroke
    "smallest_digit": 0.3,  # 2, 3: a short piece is a digit when 0.3 row heights tall (not a flat bar)
    "chain_gap": 0.6,       # 4: digits the edge cuts at most 0.6 digit heights from the next (the
    "chain_rows": 1.5,      #    strings' widest gap, 8 px at 16 px, and some blur), rows 1.5 apart
    "split_from": 0.25,     # 5: pieces wide enough for two of the thinnest digits may hold several
    "widest_digit": 1.25,   # 5: a cut-out digit is at most 1.25 row heights wide (USPS 2s: up to 1.0)
    "thinnest_digit": 0.12,  # 5: ... and at least 0.12 (the thinnest USPS 1s: 2 px of 16)
    "cuts_per_height": 16,  # 5: a cut may fall every 1/16 of the row height: every column of a 16 px digit
    "thin_from": 0.35,      # 5: thinner is "too thin": 0.03 % of MNIST digits but 1s are (36 % of 1s)
    # 5: the weights of a cut-out piece's score (piece_features; only their ratios matter, so a
    # digit costs 10), fitted on strings of MNIST validation digits by docs/measure.py's
    # --fit-number-score (docs/results.md)
    "score_weights": {"recognised": 5.89, "sure": 2.20, "too_wide": -10.59, "too_thin": -2.57,
                      "tall": 7.06, "cut_ink": -4.25, "uncut": 0.65, "digit": -10.0},
    # 5: a piece alone is tried when as wide as tall (lone MNIST digits: 90 % are narrower than
    # 1.09), and cut when its cutting scores 4.6 more than it whole: with the weights above, the
    # smallest margin that cuts none of the 3,885 lone validation digits of --fit-number-score
    "lone_from": 1.0,
    "lone_margin": 4.6,
}


def interval_overlap(first_start, first_end, second_start, second_end):
    """How many pixels two inclusive intervals share (0 when they are apart)."""
    return max(0, min(first_end, second_end) - max(first_start, second_start) + 1)


def join_groups(groups, belong):
    """Merge groups (lists of indices) as long as belong(a, b) says two of them belong together."""
    groups = [list(group) for group in groups]
    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if belong(groups[a], groups[b]):
                    groups[a] += groups.pop(b)
                    merged = True
                    break
            if merged:
                break
    return groups


def find_rows(top, bottom, left, right, mass, rules=None):
    """Rules 1 and 2: the rows of a picture's pieces of ink (their boxes and their ink), top to
    bottom, each a list of piece indices. A row is where the ink's horizontal projection has
    no gap: pieces whose heights overlap by half the shorter one's lie in one row, whatever
    their size, so a row of small digits above a row of big ones is a row of its own. Two kinds
    of piece make no row: a speck (less ink than speck_share of the picture's largest piece),
    and a piece alone at its height that is short beside the row nearest to it (under
    smallest_digit of that row's height) or lies close above or below one of its pieces
    (within stack_gap of the height: a digit broken into an upper and a lower piece). Each goes
    into the row nearest to it, where rules 1 and 3 decide what it is."""
    rules = NUMBER_RULES if rules is None else rules
    height, width = bottom - top + 1, right - left + 1

    def overlap_x(i, j):
        return interval_overlap(left[i], right[i], left[j], right[j]) >= rules["x_overlap"] * min(width[i], width[j])

    def gap(i, row):  # rows between the piece i and the row's ink (0 when they overlap)
        return max(top[row].min() - bottom[i] - 1, top[i] - bottom[row].max() - 1, 0)

    def same_row(a, b):
        return interval_overlap(top[a].min(), bottom[a].max(), top[b].min(), bottom[b].max()) >= \
            rules["row_overlap"] * min(bottom[a].max() - top[a].min(), bottom[b].max() - top[b].min())
    makers = mass >= rules["speck_share"] * mass.max()
    rows = join_groups([[i] for i in np.flatnonzero(makers)], same_row)
    joined = True
    while joined and len(rows) > 1:
        joined = False
        for row in [r for r in rows if len(r) == 1]:
            i = row[0]
            nearest = min((r for r in rows if r is not row), key=lambda r: gap(i, r))
            tallest = max(height[nearest].max(), height[i])
            if height[i] < rules["smallest_digit"] * height[nearest].max() or (
                    gap(i, nearest) <= rules["stack_gap"] * tallest and any(overlap_x(i, j) for j in nearest)):
                nearest.append(i)
                rows.remove(row)
                joined = True
                break
    for i in np.flatnonzero(~makers):  # a speck: into the row nearest its middle
        middle = (top[i] + bottom[i]) / 2
        min(rows, key=lambda r: max(top[r].min() - middle, middle - bottom[r].max(), 0)).append(i)
    return sorted(rows, key=lambda row: top[row].min())


def digits_of_row(row, top, bottom, left, right, mass, rules=None):
    """Rules 1 and 3 within one row (a list of piece indices, find_rows): its digits, left to
    right, each (members, box (top, bottom, left, right), the row's height). A piece with less
    ink than speck_share of the row's largest is a speck; the row's digit-sized pieces are
    those at least `tall` times as tall as its largest, and its height is their median."""
    rules = NUMBER_RULES if rules is None else rules
    row = np.asarray(row)
    height = bottom - top + 1
    keep = row[mass[row] >= rules["speck_share"] * mass[row].max()]               # rule 1
    tall = height >= rules["tall"] * height[row[np.argmax(mass[row])]]
    row_height = np.median(height[[i for i in keep if tall[i]]])

    def box(group):
        return top[group].min(), bottom[group].max(), left[group].min(), right[group].max()

    def above_one_another(a, b):                                                  # rule 3
        (_, _, la, ra), (_, _, lb, rb) = box(a), box(b)
        return interval_overlap(la, ra, lb, rb) >= rules["x_overlap"] * min(ra - la + 1, rb - lb + 1)
    digits = join_groups([[i] for i in keep], above_one_another)
    short = [g for g in digits if not tall[g].any()]
    digits = [g for g in digits if tall[g].any()]
    for group in short:
        t, b, l, r = box(group)
        gaps = [max(box(d)[2] - r, l - box(d)[3]) for d in digits]
        if gaps and min(gaps) <= rules["stroke_gap"] * row_height:
            digits[int(np.argmin(gaps))] += group
        elif b - t + 1 >= rules["smallest_digit"] * row_height:  # a flat bar is no digit
            digits.append(group)
    digits.sort(key=lambda group: box(group)[2])
    return [(group, box(group), row_height) for group in digits]


def cut_into_digits(pieces, ink, rules=None):
    """Group the pieces of ink of a picture (steps['pieces'] of image_to_mnist) into digits, by
    rules 1-4 above: rows first (find_rows), then the digits of each row (digits_of_row).
    Returns (labels, rows): labels from label_components, and the rows top to bottom, each a
    list, left to right, of (members, box): the labels of the pieces that form one digit (or
    several touching, see split_touching) and their box (top, bottom, left, right)."""
    labels, count = label_components(pieces)
    if count == 0:
        return labels, []
    top, bottom, left, right, mass = piece_boxes(labels, count, ink)
    rows = [digits_of_row(row, top, bottom, left, right, mass, rules)
            for row in find_rows(top, bottom, left, right, mass, rules)]
    return labels, chained(rows, mass, pieces.shape, rules)


def chained(rows, mass, shape, rules=None):
    """Rule 4: the digits of a number lie close together. A digit that the picture's edge cuts
    and that lies wholly along it (within 0.15 of its shorter side), as what is left of the
    table a page lies on does, is kept only when it is chained to the others: within chain_gap
    times the height of a digit kept sideways (and chain_rows times it up or down), starting
    from the one with the most ink that is not such a digit. Every other digit is kept: one
    written near the edge, but not cut by it, is written on the page.
    rows: as cut_into_digits makes them, with each digit's row height; shape: the picture's."""
    rules = NUMBER_RULES if rules is None else rules
    digits = [(r, k) for r, row in enumerate(rows) for k in range(len(row))]
    if not digits:
        return []
    band = 0.15 * min(shape)

    def inside(digit):
        t, b, l, rt = rows[digit[0]][digit[1]][1]
        cut_by_edge = min(t, l, shape[0] - 1 - b, shape[1] - 1 - rt) == 0
        return not cut_by_edge or min(b, rt, shape[0] - 1 - t, shape[1] - 1 - l) > band
    start = [d for d in digits if inside(d)] or digits
    kept = {max(start, key=lambda d: mass[rows[d[0]][d[1]][0]].sum())}
    grown = True
    while grown:
        grown = False
        for r, k in digits:
            if (r, k) in kept:
                continue
            t, b, l, rt = rows[r][k][1]
            for r2, k2 in list(kept):
                t2, b2, l2, rt2 = rows[r2][k2][1]
                height = b2 - t2 + 1  # the kept digit's own: a strip along the edge may be taller
                sideways = max(l - rt2, l2 - rt, 0)
                upwards = max(t - b2, t2 - b, 0)
                if sideways <= rules["chain_gap"] * height and upwards <= rules["chain_rows"] * height:
                    kept.add((r, k))
                    grown = True
                    break
    kept |= {d for d in digits if inside(d)}  # far from the others, not along the edge: a digit
    result = [[(members, box) for k, (members, box, _) in enumerate(row) if (r, k) in kept]
              for r, row in enumerate(rows)]
    return [row for row in result if row]


def digit_input(ink, labels, members, box, floor, columns=None):
    """The (28, 28) input of one digit, made of the pieces `members` of `labels` inside `box`,
    or only of its columns [start, end) when given (a cut through touching digits; None for a
    side that is the piece's own edge). Other pieces' ink is left out, so a neighbour's stroke
    never slips in; then mask_to_mnist, as for one digit. Returns None when there is no ink."""
    top, bottom, left, right = box
    rim = 3  # mask_to_mnist keeps a rim of 2 pixels around the digit's pixels
    t, l = max(0, top - rim), max(0, left - rim)
    b, r = bottom + 1 + rim, right + 1 + rim
    if columns is not None:
        l = l if columns[0] is None else columns[0]
        r = r if columns[1] is None else columns[1]
    window = labels[t:b, l:r]
    mask = np.isin(window, members)
    if not mask.any():
        return None
    alone = np.where((window >= 0) & ~mask, 0.0, ink[t:b, l:r])
    return mask_to_mnist(alone, mask, floor)[0]


def typical_top_logit(X, Ws, bs, activation="relu"):
    """How strongly the network answers a digit it knows: the median, over the images X
    (m, 784), of the largest of its ten logits Z_L. Rule 5 measures every cut-out piece against
    it, so that its score means the same for a network whose logits are twice as large.
    `train` saves it with the model (measured on the validation images); about 14 for the
    default network. Needs: logits."""
    return float(np.median(logits(X, Ws, bs, activation).max(axis=1)))


def glyph_of(ink, height=16):
    """A digit (ink 1 on 0) cut to the columns of its ink. An MNIST digit (28x28, its ink in a
    20 px box) is first cut to its rows of ink and scaled so that the box becomes `height`
    pixels: 16 is as tall as a USPS digit."""
    ink = np.asarray(ink, dtype=np.float32)
    if ink.shape[0] == 28:
        rows = np.flatnonzero((ink > 0.05).any(axis=1))
        ink = ink[rows[0]:rows[-1] + 1]
        size = (max(1, round(ink.shape[0] * height / 20)), max(1, round(28 * height / 20)))
        ink = np.clip(resize_area(ink, *size), 0, 1)
    cols = np.flatnonzero((ink > 0.05).any(axis=0))
    return ink[:, cols[0]:cols[-1] + 1]


def number_strip(glyphs, gaps, rng, jitter=1, margin=8, written_over=0.1):
    """Digits side by side, ink 1 on 0: glyphs[k + 1] starts gaps[k] pixels after glyphs[k] ends
    (0: touching, below 0: overlapping), each moved up or down by up to `jitter` pixels, and
    `margin` pixels of background around all of them. A digit is never written over its
    neighbour: where the two would share more than `written_over` of the smaller one's ink, the
    later one moves right until they do not (a 1 two pixels wide laid two pixels into a 0 would
    vanish into its stroke, and no reader could find it). Returns (strip, boxes (top, bottom,
    left, right) of each digit in the strip)."""
    tallest = max(g.shape[0] for g in glyphs)
    height = tallest + 2 * jitter + 2 * margin
    width = sum(g.shape[1] for g in glyphs) + sum(max(gap, 0) for gap in gaps) + 2 * margin
    strip = np.zeros((height, width), np.float32)
    x, boxes = margin, []
    for k, glyph in enumerate(glyphs):
        y = margin + jitter + int(rng.integers(-jitter, jitter + 1)) + (tallest - glyph.shape[0]) // 2
        h, w = glyph.shape
        if k:
            least = written_over * min(glyph.sum(), glyphs[k - 1].sum())
            while np.minimum(strip[y:y + h, x:x + w], glyph).sum() > least:
                x += 1
        np.maximum(strip[y:y + h, x:x + w], glyph, out=strip[y:y + h, x:x + w])
        boxes.append((y, y + h - 1, x, x + w - 1))
        x += w + (gaps[k] if k < len(gaps) else 0)
    return strip[:, :boxes[-1][3] + 1 + margin], boxes


def random_gaps(count, rng, touching=1 / 3):
    """count gaps between digits 16 px tall: `touching` of them overlapping or touching (-2 to
    0 px), the others 1 to 8 px (a tight to a wide hand)."""
    return [int(rng.integers(-2, 1)) if rng.random() < touching else int(rng.integers(1, 9))
            for _ in range(count)]


def number_reader(Ws, bs, activation="relu"):
    """The function rule 5 reads candidate digits with: inputs X (m, 784) -> the network's
    logits Z_L (m, 10). Needs: logits."""
    return lambda X: logits(X, Ws, bs, activation)


# What a cut-out piece is scored on (rule 5): one number each, in the order of the weights in
# NUMBER_RULES["score_weights"].
SCORE_FEATURES = ("recognised", "sure", "too_wide", "too_thin", "tall", "cut_ink", "uncut", "digit")


def piece_features(Z, widths, heights, edge_ink, uncut, row_height, typical, alone=False,
                   rules=None):
    """The features of k cut-out pieces that say how much each looks like one digit, (k, 8):
      recognised  its largest logit / the network's typical one (a pair of digits read as one
                  digit answers weakly: the network has never seen one)
      sure        log of its largest probability (how clearly it is that digit and no other)
      too_wide    how much wider than the row is tall it is, beyond 1 (width / row height - 1);
                  0 for a piece alone in the picture read whole: it is its own row, and a
                  single wide digit (a flat 2) is as wide as two touching ones
      too_thin    how much thinner than thin_from row heights it is (a sliver off a digit)
      tall        the height of its ink / the row height, at most 1 (a digit fills the row)
      cut_ink     the rows in which its cuts went through a stroke, / row height
      uncut       1 for the piece as it was found, 0 for a piece cut out of it
      digit       1: every digit read costs the same, so a cutting needs evidence for each
    Z (k, 10) its logits; widths, heights, edge_ink (k,) in pixels; uncut (k,) booleans."""
    rules = NUMBER_RULES if rules is None else rules
    k = len(Z)
    top = Z.max(axis=1)
    log_P = -np.log(np.exp(Z - top[:, None]).sum(axis=1))  # log P_top = Z_top - log sum_k e^Z_k
    width = widths / row_height
    too_wide = np.where(uncut & alone, 0.0, np.maximum(width - 1, 0))
    return np.stack([top / typical, log_P, too_wide,
                     np.maximum(rules["thin_from"] - width, 0), np.minimum(heights / row_height, 1),
                     edge_ink / row_height, uncut.astype(float), np.ones(k)], axis=1)


def best_cutting(scores, segments, n):
    """The cutting of columns [0, n) (cut indices 0..n) into consecutive segments whose scores
    add up to the most, by dynamic programming: best[j] is the best total for [0, j), found from
    best[i] + score(i, j) over every segment (i, j) ending at j. Returns the segments' indices,
    left to right."""
    best = {0: (0.0, None)}
    for s in sorted(range(len(segments)), key=lambda s: segments[s][1]):  # by where they end
        i, j = segments[s]
        if i in best and (j not in best or best[i][0] + scores[s] > best[j][0]):
            best[j] = (best[i][0] + scores[s], s)
    path, j = [], n
    while j:
        s = best[j][1]
        path.append(s)
        j = segments[s][0]
    return path[::-1]


def candidate_segments(labels, members, box, row_height, rules=None):
    """Where a piece may be cut (rule 5): at candidate columns every row_height / cuts_per_height
    pixels (every column of a 16 px digit), at least thinnest_digit row heights from either end.
    A segment between two cuts i < j, between thinnest_digit and widest_digit row heights wide,
    is a candidate digit; so is the whole piece. Returns (inside, cuts, segments): the piece's
    pixels within its box (boolean), the cut columns (from the box's left, 0 and the width
    included) and the segments as (i, j) index pairs."""
    rules = NUMBER_RULES if rules is None else rules
    top, bottom, left, right = box
    width = right - left + 1
    inside = np.isin(labels[top:bottom + 1, left:right + 1], members)
    step = max(1, int(round(row_height / rules["cuts_per_height"])))
    margin = max(1, int(np.ceil(rules["thinnest_digit"] * row_height)))
    cuts = np.unique([0] + list(range(margin, width - margin + 1, step)) + [width])
    n = len(cuts) - 1
    narrowest, widest = rules["thinnest_digit"] * row_height, rules["widest_digit"] * row_height
    segments = [(i, j) for i in range(n) for j in range(i + 1, n + 1)
                if (i, j) == (0, n) or narrowest <= cuts[j] - cuts[i] <= widest]
    return inside, cuts, segments


def segment_input(ink, labels, members, box, floor, cuts, segment):
    """The (28, 28) input of the segment (i, j) of a piece (candidate_segments), or None when it
    holds no ink. A side that is the piece's own edge keeps the rim a single digit has."""
    i, j = segment
    n = len(cuts) - 1
    left = box[2]
    return digit_input(ink, labels, members, box, floor,
                       None if (i, j) == (0, n) else (left + cuts[i] if i else None,
                                                      left + cuts[j] if j < n else None))


def cut_candidates(ink, labels, members, box, floor, row_height, rules=None):
    """Every digit that may be cut out of a piece (candidate_segments), with its input.
    Returns (cuts, segments, inputs, widths, heights, edge_ink): the cut columns, the segments
    that hold ink as (i, j) index pairs, their (28, 28) inputs, and per segment its width, the
    height of its ink and the ink its cuts go through (the rows where ink lies on both sides of
    a cut: a stroke cut in two)."""
    inside, cuts, candidates = candidate_segments(labels, members, box, row_height, rules)
    # crossing[c]: the rows in which a cut between columns c - 1 and c goes through ink
    crossing = np.concatenate(([0], (inside[:, :-1] & inside[:, 1:]).sum(axis=0), [0]))
    segments, inputs, widths, heights, edge_ink = [], [], [], [], []
    for i, j in candidates:
        x28 = segment_input(ink, labels, members, box, floor, cuts, (i, j))
        if x28 is None:
            continue
        rows = np.flatnonzero(inside[:, cuts[i]:cuts[j]].any(axis=1))
        segments.append((i, j))
        inputs.append(x28)
        widths.append(cuts[j] - cuts[i])
        heights.append(rows[-1] - rows[0] + 1)
        edge_ink.append(crossing[cuts[i]] + crossing[cuts[j]])
    return cuts, segments, np.array(inputs), np.array(widths), np.array(heights), np.array(edge_ink)


def scored_candidates(ink, labels, members, box, floor, row_height, network, typical, alone=False,
                      rules=None):
    """Rule 5's candidate digits of a piece (cut_candidates), read by the network at once and
    described by piece_features. A piece narrower than split_from row heights (lone_from for a
    piece alone in the picture, which has no row to be compared with) cannot hold two digits: its
    one candidate is itself. Returns (cuts, segments, inputs, Z, features).
    network: a function (m, 784) -> logits (m, 10), as number_reader makes it; typical: typical_top_logit of the network."""
    rules = NUMBER_RULES if rules is None else rules
    top, bottom, left, right = box
    width = right - left + 1
    if width < (rules["lone_from"] if alone else rules["split_from"]) * row_height:
        cuts, segments = np.array([0, width]), [(0, 1)]
        inputs = digit_input(ink, labels, members, box, floor)[None]
        widths, heights, edge_ink = np.array([width]), np.array([bottom - top + 1]), np.zeros(1)
    else:
        cuts, segments, inputs, widths, heights, edge_ink = cut_candidates(
            ink, labels, members, box, floor, row_height, rules)
    n = len(cuts) - 1
    Z = network(inputs.reshape(-1, 784))  # every candidate digit read at once
    uncut = np.array([segment == (0, n) for segment in segments])
    features = piece_features(Z, widths, heights, edge_ink, uncut, row_height, typical, alone,
                              rules)
    return cuts, segments, inputs, Z, features


def split_touching(ink, labels, members, box, floor, row_height, network, typical, alone=False,
                   rules=None):
    """Rule 5: read a piece that may hold several touching digits ("recognition-based
    segmentation"). Every candidate digit (scored_candidates) gets a score = w . features (the
    weights NUMBER_RULES["score_weights"]). The cutting of the piece whose digits' scores add up
    to the most wins (best_cutting); the piece read whole is one of the cuttings. A piece alone
    in the picture (alone=True) is cut only when the cutting scores lone_margin more than the
    piece whole, so that one digit stays one digit.
    network: as number_reader makes it; typical: typical_top_logit.
    Returns a list of (x28, P, box), left to right."""
    rules = NUMBER_RULES if rules is None else rules
    top, bottom, left, _ = box
    cuts, segments, inputs, Z, features = scored_candidates(
        ink, labels, members, box, floor, row_height, network, typical, alone, rules)
    scores = features @ np.array([rules["score_weights"][name] for name in SCORE_FEATURES])
    n = len(cuts) - 1
    path = best_cutting(scores, segments, n)
    whole = segments.index((0, n))
    if alone and scores[path].sum() < scores[whole] + rules["lone_margin"]:
        path = [whole]
    P = softmax(Z[path])
    return [(inputs[s], p, (top, bottom, left + cuts[segments[s][0]], left + cuts[segments[s][1]] - 1))
            for s, p in zip(path, P)]


def read_digits(steps, network, typical, rules=None):
    """Every digit in the picture that image_to_mnist prepared (its steps), in reading order.

    Returns a list of dicts {'digit', 'probabilities' (10,), 'x28' (28, 28), 'box' (top, bottom,
    left, right in the pixels of steps['gray'], inclusive), 'row' (0, 1, ...)}; an empty list
    when the picture holds one digit, which predict_image reads as it is.
    network: as number_reader makes it; typical: typical_top_logit.
    """
    rules = NUMBER_RULES if rules is None else rules
    labels, rows = cut_into_digits(steps["pieces"], steps["ink"], rules)
    alone = sum(len(row) for row in rows) == 1  # one piece: its own height is the row's
    digits = []
    for row_number, row in enumerate(rows):
        row_height = float(np.median([box[1] - box[0] + 1 for _, box in row]))
        for members, box in row:
            for x28, P, cut_box in split_touching(steps["ink"], labels, members, box, steps["floor"],
                                                  row_height, network, typical, alone, rules):
                digits.append({"digit": int(P.argmax()), "probabilities": P, "x28": x28,
                               "box": tuple(int(v) for v in cut_box), "row": row_number})
    return digits if len(digits) > 1 else []


# predict marks a digit read with less: on USPS strings, 71 % of the misread digits and 4 % of
# the digits read right (docs/results.md)
UNSURE = 0.95


def number_text(digits):
    """The digits as a string, rows separated by a line break: '2026', '12\\n34'."""
    rows = {}
    for digit in digits:
        rows.setdefault(digit["row"], []).append(str(digit["digit"]))
    return "\n".join("".join(row) for _, row in sorted(rows.items()))


# The typical top logit of a model saved without one (see typical_top_logit): the default
# network's, on its validation images.
TYPICAL_TOP_LOGIT = 14.3


def predict_number(gray, alpha, Ws, bs, activation="relu", dataset="mnist", typical=None):
    """predict_image, reading every digit when the image holds more than one (MNIST models).

    Returns (x28, P, steps) as predict_image does, and when a digit is found also
    steps['digits'], the digits in reading order (see read_digits; boxes in the pixels of
    `gray`), and steps['number'], their text (number_text). With one digit found the answer is
    predict_image's, unchanged; with several, x28 and P are those of the first digit.
    typical: the network's typical_top_logit (saved with the model as meta["typical_logit"]);
    Needs: predict_image, read_digits, number_reader.
    """
    x28, P, steps = predict_image(gray, alpha, Ws, bs, activation, dataset)
    if x28 is None or dataset != "mnist":
        return x28, P, steps
    digits = read_digits(steps, number_reader(Ws, bs, activation),
                         TYPICAL_TOP_LOGIT if typical is None else typical)
    if len(digits) <= 1:  # one digit: predict_image's reading, its box that of the digit's pixels
        ys, xs = np.nonzero(steps["mask"])
        digits = [{"digit": int(P.argmax()), "probabilities": P, "x28": x28, "row": 0,
                   "box": (ys.min(), ys.max(), xs.min(), xs.max())}]
    scale = gray.shape[0] / steps["gray"].shape[0]  # large photos were shrunk for the work
    for digit in digits:
        top, bottom, left, right = digit["box"]
        digit["box"] = (int(top * scale), int((bottom + 1) * scale) - 1,
                        int(left * scale), int((right + 1) * scale) - 1)
    steps["digits"], steps["number"] = digits, number_text(digits)
    return digits[0]["x28"], digits[0]["probabilities"], steps


def digits_answer(steps):
    """The "number" and "digits" fields of predict --json and of serve's POST /predict: the
    number's text (None when no digit was found) and each digit's value, probabilities and box
    in the image's pixels (left, top, right, bottom, inclusive)."""
    return {"number": steps.get("number"),
            "digits": [{"digit": d["digit"], "probabilities": [round(float(v), 6) for v in d["probabilities"]],
                        "box": {"left": d["box"][2], "top": d["box"][0], "right": d["box"][3],
                                "bottom": d["box"][1]}}
                       for d in steps.get("digits", [])]}


def number_from_filename(name):
    """The true number encoded at the start of a file name, for scoring a folder of images.

    '2026.jpg' -> '2026', '2026_anna.jpg' -> '2026', '7.png' -> '7'; 'img7.png' -> None.
    """
    base = str(name).replace("\\", "/").split("/")[-1]
    digits = len(base) - len(base.lstrip("0123456789"))
    return base[:digits] or None


def edit_distance(a, b):
    """The fewest insertions, deletions and substitutions of single characters that turn the
    string a into b (Levenshtein): how many digits of a number were read wrong, missed or added."""
    row = list(range(len(b) + 1))  # distances from a[:0] to every b[:j]
    for i, ca in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


# The `predict` command: every image it is given read with predict_number, one line (or JSON
# object) printed for each, the files named after what they show scored, and the --plot pictures
# drawn by section [12]'s plot_prediction and plot_number.


def list_images(paths):
    """Expand folders into the image files they hold (sorted); keep files as given."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path)
                            if f.lower().endswith((".png", ".jpg", ".jpeg"))
                            and os.path.isfile(os.path.join(path, f)))
        else:
            files.append(path)
    return files


def plot_path_for(plot, image_path, several):
    """The picture file for one image: --plot itself, or with several images FILE_<image>.png."""
    if not several:
        return plot
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return f"{os.path.splitext(plot)[0]}_{stem}.png"


def check_predict_options(args, files):
    """Refuse --steps without --plot, and a --plot picture that would overwrite an image."""
    if args.steps and not args.plot:
        raise UserError("--steps draws the preprocessing steps into the --plot picture; "
                        "add --plot FILE.png")
    if args.plot:  # the pictures must never overwrite one of the images they show
        inputs = {os.path.abspath(path) for path in files}
        for path in files:
            target = plot_path_for(args.plot, path, len(files) > 1)
            if os.path.abspath(target) in inputs:
                raise UserError(f"--plot {args.plot}: would overwrite the image {target}\n"
                                f"choose another name for the picture")


def prediction_line(path, p, steps, class_names, as_json):
    """What `predict` prints for one image: a line of text, or (as_json) one JSON object.
    p: the probabilities (None: nothing found), steps: predict_number's."""
    digit = None if p is None else int(p.argmax())
    probabilities = None if p is None else [round(float(v), 6) for v in p]
    if as_json and not class_names:
        return json.dumps({"path": path, "digit": digit, "probabilities": probabilities,
                           **digits_answer(steps)})
    if as_json:
        return json.dumps({"path": path, "label": digit, "probabilities": probabilities,
                           "name": None if p is None else class_names[digit]})
    if len(steps.get("digits", [])) > 1:  # a number: each digit and how sure of it
        return (f"{path}: {steps['number'].replace(chr(10), ' / ')}  (digits "
                + ", ".join(f"{100 * d['probabilities'].max():.1f} %"
                            + (" UNSURE" if d["probabilities"].max() < UNSURE else "")
                            for d in steps["digits"]) + ")")
    if p is None:
        found_nothing = "nothing found" if class_names else "no digit found"
        return f"{path}: {found_nothing} ({steps.get('reason', 'nothing like a digit')})"
    if class_names:
        return (f"{path}: {class_names[digit]}  ({100 * p[digit]:.1f} % sure)   "
                + ", ".join(f"{name} {100 * v:.1f}%" for name, v in zip(class_names, p)))
    return (f"{path}: {digit}  ({100 * p[digit]:.1f} % sure)   "
            + " ".join(f"{k}:{100 * v:.1f}%" for k, v in enumerate(p)))


def filename_scores(read, class_names):
    """The lines `predict` prints after the last image, scoring the images named after what
    they show. read: (path, digit or None, the number's text, several digits?) per image.

    File names that start with the true digit (7.png, 7_anna.jpg) are scored as one digit; those
    that start with a number of several digits (2026.jpg, 2026_anna.jpg) are scored whole: the
    number read exactly, and its digits (all of them minus the edit distance).
    """
    scored, wrong = 0, []
    numbers, misread = [], []  # (true, read) for files named after a number of several digits
    for path, digit, text, several in read:
        truth, number = digit_from_filename(path), number_from_filename(path)
        if number is not None and len(number) > 1 and not class_names:
            numbers.append((number, text.replace("\n", "")))
            if numbers[-1][1] != number:
                misread.append(f"{os.path.basename(path)} (read {numbers[-1][1] or 'nothing'})")
        elif truth is not None:
            scored += 1
            if digit != truth or several:
                said = digit if class_names is None or digit is None else class_names[digit]
                said = text.replace("\n", " / ") if several else said
                wrong.append(f"{os.path.basename(path)} (said {said})")
    lines = []
    if scored:
        lines.append(f"{scored - len(wrong)} of {scored} correct "
                     f"({100 * (scored - len(wrong)) / scored:.1f} %)"
                     + (f"; wrong: {', '.join(wrong)}" if wrong else ""))
    if numbers:
        total = sum(len(true) for true, _ in numbers)
        right = total - sum(edit_distance(true, read) for true, read in numbers)
        exact = sum(true == read for true, read in numbers)
        lines.append(f"numbers: {exact} of {len(numbers)} read exactly "
                     f"({100 * exact / len(numbers):.1f} %), "
                     f"digits: {right} of {total} right ({100 * right / total:.1f} %)"
                     + (f"; wrong: {', '.join(misread)}" if misread else ""))
    return lines


def plot_predict_picture(target, gray, x, p, steps, with_steps, show, class_names):
    """The --plot picture of one image: the image, the 28x28 input and the probabilities, or
    every digit of a number; with_steps (--steps) adds a panel for each preprocessing step.
    Drawn by section [12]'s plot_prediction and plot_number."""
    several = len(steps.get("digits", [])) > 1
    panels = None
    if with_steps:
        panels = {name: steps[name] for name in ("gray", "ink", "lines", "mask", "cropped")
                  if name in steps}
        if several:  # every piece of ink, not the one digit's mask and crop
            panels = {name: steps[name] for name in ("gray", "ink", "lines", "pieces")}
    if several:
        plot_number(gray, steps["digits"], target, steps=panels, show=show)
    else:
        plot_prediction(steps.get("gray", gray), x, p, target, steps=panels, show=show,
                        reason=steps.get("reason"), class_names=class_names)


def add_predict_command(add, shared):
    """`predict` and its options (add and shared: see build_parser)."""
    p = add("predict", "recognise the digit, or every digit of a number, in images (PNG or JPEG, "
                       "or folders of them); files named after what they show, like 7.png, "
                       "7_anna.jpg or 2026.jpg, are also scored", shared.saved_model, shared.show)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object per image, with "number" and each of its "digits"')
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw the image, the 28x28 input the network saw and its probabilities "
                        "(with several images: FILE_<image>.png each)")
    p.add_argument("--steps", action="store_true",
                   help="with --plot: also draw every preprocessing step as its own panel")
    p.set_defaults(run=command_predict, paths={"model": "model to read", "images": "images to read",
                                               "plot": "picture to write"})


def command_predict(args):
    Ws, bs, meta, dataset, class_names = load_model_and_dataset(args)
    activation = meta["activation"]
    files = list_images(args.images)
    if not files:
        raise UserError(f"no PNG or JPEG images in {', '.join(args.images)}")
    check_predict_options(args, files)
    read, unreadable = [], []
    for path in files:
        try:
            gray, alpha = read_image(path)
        except (ValueError, MemoryError) as e:  # a broken or huge file: say so, go on
            print(f"error: {e}", file=sys.stderr, flush=True)
            unreadable.append(path)
            continue
        x, p, steps = predict_number(gray, alpha, Ws, bs, activation, dataset,
                                     meta.get("typical_logit"))
        print(prediction_line(path, p, steps, class_names, args.json))
        read.append((path, None if p is None else int(p.argmax()), steps.get("number", ""),
                     len(steps.get("digits", [])) > 1))
        if args.plot:
            target = plot_path_for(args.plot, path, len(files) > 1)
            plot_predict_picture(target, gray, x, p, steps, args.steps, args.show, class_names)
            if not args.json:
                print(f"  wrote {target}")
    if not args.json:
        for line in filename_scores(read, class_names):
            print(line, flush=True)
    if unreadable and len(files) > 1:
        print(f"error: {len(unreadable)} of {len(files)} images could not be read (see above); "
              f"the others were predicted", file=sys.stderr)
    return 2 if unreadable else 0


# %% [12] Pictures: training curves, confusion matrix, mistakes, weights, one prediction
#
# Numbers in a log say *how well* the network does; pictures show *how* and *where*:
#   plot_history     loss and accuracy per epoch — is it still learning? is it overfitting?
#   plot_confusion   which digits are taken for which (4 <-> 9, 3 <-> 5, 7 <-> 2 ...)
#   plot_errors      the test digits it got most confidently wrong (some are wrong in MNIST itself)
#   plot_weights     the first layer's weights W1 drawn as 28x28 pictures: what each hidden unit looks for
#   plot_prediction  a photo, the 28x28 input cut from it, and the ten probabilities
#   plot_number      a number: each digit found boxed in the photo, its 28x28 input and its answer
#   save_digit_png   one digit as an ordinary picture, to try `predict` on
#
# Each of them writes a PNG file and returns its path. matplotlib is imported inside the functions,
# so training and evaluating never need it. A figure is drawn off screen (matplotlib's "Agg" renderer,
# which paints into memory and needs no display) unless a window is asked for with show=True and the
# computer has a screen to put it on. Files are written atomically: drawn to a temporary file in the
# same folder, then renamed over the target, so an interrupted run never leaves half a PNG behind.
#
# All figures are drawn at 100 dots per inch, so a size of (8, 4) inches is exactly 800 x 400 pixels.
#
# The section ends with the commands that draw from a saved model or the data: `weights`,
# `samples` (a few test digits as PNG files, to try `predict` on) and `pictures` (the README's).


PLOT_DPI = 100  # pixels per inch: figure sizes below are given in pixels and divided by this


def display_available():
    """True when a figure window could be opened on this computer.

    On Linux and other Unix systems a window needs an X11 or Wayland display, announced by the
    environment variables DISPLAY or WAYLAND_DISPLAY (unset over ssh, in containers, in CI).
    Windows and macOS always have a desktop. A Jupyter kernel shows figures inside the notebook.
    """
    if "ipykernel" in sys.modules:
        return True
    if sys.platform.startswith(("win", "darwin")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _new_figure(width_px, height_px, show=False, layout="constrained"):
    """An empty matplotlib figure of exactly width_px x height_px pixels.

    This is the one place that chooses how figures are drawn. Only a figure meant for the screen goes
    through pyplot, which picks a window backend. Every other figure is a bare Figure painted by Agg:
    it needs no display and leaves pyplot's global state (and a notebook's backend) untouched.
    """
    size_inches = (width_px / PLOT_DPI, height_px / PLOT_DPI)
    if show and display_available():
        import matplotlib.pyplot as plt
        return plt.figure(figsize=size_inches, dpi=PLOT_DPI, layout=layout)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=size_inches, dpi=PLOT_DPI, layout=layout)
    FigureCanvasAgg(figure)  # attach the off-screen painter
    return figure


def _check_png_path(path):
    """Raise ValueError (one line: what is wrong, what to do) unless path names a PNG in an existing folder."""
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"{path}: pictures are written as PNG; give a file name ending in .png")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: the folder {folder} does not exist; create it or choose another file name")


def _save_figure(figure, path):
    """Write figure to path as PNG (atomically), open it in a window if it was made for one, return path."""
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=PLOT_DPI))
    if figure.canvas.manager is not None:  # only pyplot figures have a window manager, see _new_figure
        import matplotlib.pyplot as plt
        plt.show()  # waits until the window is closed
        plt.close(figure)
    return path


def plot_history(history, path, show=False):
    """Draw loss and accuracy per epoch, training and validation, side by side (800 x 400 px PNG).

    history: a list of dicts, one per epoch, with keys epoch, train_loss, train_acc, val_loss, val_acc,
    seconds. Accuracies are fractions in [0, 1] (drawn in %). val_loss and val_acc are None when
    there was no validation split; then only the training curves are drawn.

    How to read it: both losses falling = still learning; training loss falling while validation
    loss rises = overfitting (the network memorises the training images).
    """
    _check_png_path(path)
    if len(history) == 0:
        raise ValueError("the training history is empty: train for at least one epoch before plotting it")
    from matplotlib.ticker import MaxNLocator

    def column(key):  # one value per epoch; None (no validation split) becomes NaN, a gap in the line
        return np.array([np.nan if row.get(key) is None else row[key] for row in history], dtype=float)

    epochs = column("epoch")
    has_validation = not np.all(np.isnan(column("val_loss")))
    total_seconds = np.nansum(column("seconds"))

    figure = _new_figure(800, 400, show)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for axes, key, scale, last_value, title in ((loss_axes, "loss", 1.0, "{:.3f}", "loss (cross-entropy)"),
                                                (accuracy_axes, "acc", 100.0, "{:.2f} %", "accuracy (%)")):
        training = column("train_" + key) * scale
        axes.plot(epochs, training, "o-", color="tab:blue", markersize=4,
                  label="training, last: " + last_value.format(training[-1]))
        if has_validation:
            validation = column("val_" + key) * scale
            axes.plot(epochs, validation, "s--", color="tab:orange", markersize=4,
                      label="validation, last: " + last_value.format(validation[-1]))
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axes.grid(alpha=0.3)
        axes.legend()
    seconds = f"{total_seconds:.1f}" if total_seconds < 10 else f"{total_seconds:.0f}"  # not "0 s"
    figure.suptitle(f"training history: {len(history)} epochs in {seconds} s")
    return _save_figure(figure, path)


def plot_confusion(confusion, path, show=False, class_names=None):
    """Draw the confusion matrix as a labelled heat map with the count written in every cell (600 x 560 px PNG).

    confusion: (10, 10) integers; confusion[t, p] = how many test images of true digit t were predicted
    as p. The diagonal holds the right answers, everything else is a mistake. class_names: ten names
    for the axes instead of the digits 0..9 (e.g. Fashion-MNIST's "T-shirt/top", "Trouser", ...).

    Colours follow log(count): the diagonal holds about 1000 per cell and the mistakes 0 to 20, so on a
    linear scale every mistake would be the same pale colour. Empty cells stay white.
    """
    _check_png_path(path)
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"the confusion matrix must be square, (10, 10) for ten digits, not {confusion.shape}")
    import matplotlib
    from matplotlib.colors import LogNorm

    n_classes = confusion.shape[0]
    correct, total = int(np.trace(confusion)), int(confusion.sum())
    colormap = matplotlib.colormaps["Blues"].with_extremes(bad="white")  # "bad" = the masked zeros
    norm = LogNorm(vmin=0.5, vmax=max(2, confusion.max()))  # log(0) is undefined: zeros are masked; 0.5 tints a 1

    figure = _new_figure(600, 560, show)
    axes = figure.subplots()
    image = axes.imshow(np.ma.masked_equal(confusion, 0), cmap=colormap, norm=norm)
    for true_digit in range(n_classes):
        for predicted_digit in range(n_classes):
            count = int(confusion[true_digit, predicted_digit])
            if count == 0:
                text_colour = "0.6"  # a grey 0 on white: present but quiet
            else:
                red, green, blue, _ = colormap(norm(count))
                luminance = 0.299 * red + 0.587 * green + 0.114 * blue  # perceived brightness of the cell
                text_colour = "white" if luminance < 0.5 else "black"
            axes.text(predicted_digit, true_digit, str(count), ha="center", va="center",
                      fontsize=8, color=text_colour)
    axes.set_xticks(range(n_classes))
    axes.set_yticks(range(n_classes))
    if class_names:
        axes.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
        axes.set_yticklabels(class_names, fontsize=8)
    axes.set_xlabel("predicted " + ("class" if class_names else "digit"))
    axes.set_ylabel("true " + ("class" if class_names else "digit"))
    percent = 100.0 * correct / max(total, 1)
    axes.set_title(f"confusion matrix: {correct} of {total} right ({percent:.2f} %)")
    colorbar = figure.colorbar(image, ax=axes, shrink=0.8, label="count (log scale)")
    powers_of_ten = [10 ** e for e in range(int(np.log10(norm.vmax)) + 1)]  # 1, 10, 100, 1000
    colorbar.set_ticks(powers_of_ten, labels=[str(t) for t in powers_of_ten])
    return _save_figure(figure, path)


def worst_errors(probabilities, labels, k):
    """Indices of the (at most) k misclassified examples the network was most sure about, worst first.

    probabilities: (m, 10) softmax outputs; labels: (m,) true digits. An example is misclassified when
    argmax(probabilities) != label; "worst" = highest probability given to that wrong answer.
    Ties keep the original order.
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    predicted = probabilities.argmax(axis=1)                  # (m,)
    confidence = probabilities.max(axis=1)                    # (m,) probability of the predicted digit
    wrong = np.flatnonzero(predicted != labels)               # indices of the mistakes
    order = np.argsort(-confidence[wrong], kind="stable")     # most confident mistake first
    return wrong[order][:k]


def plot_errors(images, true_labels, predicted, confidence, path, n=24, show=False, class_names=None):
    """Draw the first n of the given misclassified digits in a grid of 8 columns, titled "true 3 / said 5 (97 %)".

    With class_names (ten strings) the titles name the classes instead: "Shirt → T-shirt/top (97 %)"
    (true class above, the network's answer below).
    images: (k, 784) or (k, 28, 28), white digit on black, already sorted worst first (see worst_errors);
    true_labels, predicted: (k,) digits; confidence: (k,) probability given to the predicted digit.
    The picture is 800 pixels wide and 40 + 130 * rows pixels high, rows = ceil(n / 8).
    """
    _check_png_path(path)
    images = np.asarray(images)
    k = len(images)
    if not (len(true_labels) == len(predicted) == len(confidence) == k):
        raise ValueError("images, true_labels, predicted and confidence must have the same length")
    if not 1 <= n <= 80:
        raise ValueError(f"n = {n}: choose between 1 and 80 digits so each one stays big enough to read")
    images = images.reshape(k, 28, 28)
    brightest = 255 if images.dtype == np.uint8 else 1.0   # pixel value of full ink
    shown = min(n, k)
    columns = 8
    rows = max(1, -(-n // columns))  # ceil(n / 8): the size depends on n only, not on how many errors exist

    figure = _new_figure(800, 40 + 130 * rows, show)
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.ravel()):
        axes.set_axis_off()
        if index < shown:
            axes.imshow(images[index], cmap="gray", vmin=0, vmax=brightest, interpolation="nearest")
            if class_names:  # names are long: one per line, smaller
                axes.set_title(f"{class_names[int(true_labels[index])]}\n\u2192 "
                               f"{class_names[int(predicted[index])]} "
                               f"({100 * float(confidence[index]):.0f} %)", fontsize=7)
            else:
                axes.set_title(f"true {int(true_labels[index])} / said {int(predicted[index])}\n"
                               f"({100 * float(confidence[index]):.0f} %)", fontsize=9)
    if shown == 0:
        figure.suptitle(f"no misclassified {'images' if class_names else 'digits'}: every one was recognised")
    else:
        figure.suptitle(f"the {shown} mistakes the network was most sure about")
    return _save_figure(figure, path)


def smoothness(tiles):
    """For each (28, 28) tile: how alike neighbouring pixels are, from about 0 (salt-and-pepper
    noise, like a random start) to near 1 (smooth strokes and blobs).

    With the tile's mean taken out: (Σ w_p w_q over all pairs p, q of pixels next to each other,
    across and down) / (2 Σ w_p²), the correlation of a pixel with its neighbour. tiles: (n, 28, 28).
    """
    tiles = tiles - tiles.mean(axis=(1, 2), keepdims=True)
    pairs = (tiles[:, :, 1:] * tiles[:, :, :-1]).sum(axis=(1, 2)) \
        + (tiles[:, 1:, :] * tiles[:, :-1, :]).sum(axis=(1, 2))
    energy = 2 * (tiles ** 2).sum(axis=(1, 2))
    return pairs / np.where(energy > 0, energy, 1.0)


def plot_weights(W1, path, max_tiles=100, show=False, start=None):
    """Draw hidden units' 784 incoming weights as 28x28 pictures: what each unit looks for (600 x 640 px PNG).

    W1: (784, n_hidden), the first layer's weights; column j holds unit j's weight for every pixel, so
    Z[:, j] = X @ W1[:, j] + b1[j] is large when the ink falls on its red (positive) pixels and avoids
    its blue (negative) ones. Each tile gets its own symmetric colour scale, -max|w| .. +max|w|, so
    white is exactly 0 in every tile and faint units are still visible.

    start: the same layer's random starting weights, when known; then W1 - start is drawn, what
    training added. In a wide layer the random start is larger than what is learned (measured on the
    default 784-512-256-10 after 9 epochs: |W1 - start| is about half of |start|, unit by unit),
    and its salt-and-pepper noise hides the learned strokes when W1 is drawn as it is.
    Of more than max_tiles units, the max_tiles smoothest (see smoothness) are drawn, smoothest first:
    units that learned little (or never fire) stay close to noise and say nothing.
    """
    _check_png_path(path)
    W1 = np.asarray(W1, dtype=np.float32)
    if W1.ndim != 2 or W1.shape[0] != 784:
        raise ValueError(f"W1 must have shape (784, n_hidden), one row per pixel, not {W1.shape}")
    if start is not None:
        W1 = W1 - np.asarray(start, dtype=np.float32)  # what training added to the random start
    import matplotlib

    n_hidden = W1.shape[1]
    n_tiles = min(n_hidden, max_tiles)
    columns = int(np.ceil(np.sqrt(n_tiles)))
    rows = int(np.ceil(n_tiles / columns))
    tiles = W1.T.reshape(n_hidden, 28, 28)                           # (784, n) -> (n, 28, 28)
    tiles = tiles[np.argsort(-smoothness(tiles), kind="stable")[:n_tiles]]  # smoothest first
    largest = np.abs(tiles).max(axis=(1, 2), keepdims=True)          # (n, 1, 1) per-tile scale
    tiles = tiles / np.where(largest > 0, largest, 1.0)              # every tile now in [-1, 1]

    # One mosaic image with a 2-pixel gap between tiles is far faster to draw than 100 separate plots.
    # The gaps are NaN, which the colormap draws as light grey.
    gap = 2
    mosaic = np.full((rows * (28 + gap) - gap, columns * (28 + gap) - gap), np.nan, dtype=np.float32)
    for index in range(n_tiles):
        top, left = (index // columns) * (28 + gap), (index % columns) * (28 + gap)
        mosaic[top:top + 28, left:left + 28] = tiles[index]

    figure = _new_figure(600, 640, show)
    axes = figure.subplots()
    colormap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")  # red +, white 0, blue -
    image = axes.imshow(mosaic, cmap=colormap, vmin=-1, vmax=1, interpolation="nearest")
    axes.set_axis_off()
    drawn = "W1 minus its random start" if start is not None else "W1"
    chosen = f"the {n_tiles} smoothest of {n_hidden} units" if n_tiles < n_hidden else f"{n_hidden} units"
    axes.set_title(f"what the hidden units look for: {drawn}\n28x28 tiles, {chosen}")
    colorbar = figure.colorbar(image, ax=axes, orientation="horizontal", shrink=0.6, pad=0.02)
    colorbar.set_ticks([-1, 0, 1], labels=["most negative", "0", "most positive"])
    colorbar.set_label("weight change, scaled per tile" if start is not None else "weight, scaled per tile")
    return _save_figure(figure, path)


def _show_image(axes, image, title):
    """Draw a grey or colour image on axes with its natural range: 0..255 for uint8, 0..1 for floats."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.float32)
    if image.ndim == 2:
        brightest = 255 if image.dtype == np.uint8 else max(1.0, float(np.nanmax(image)) if image.size else 1.0)
        axes.imshow(image, cmap="gray", vmin=0, vmax=brightest, interpolation="nearest")
    else:
        axes.imshow(image)  # (h, w, 3) or (h, w, 4): matplotlib reads uint8 and float colours itself
    axes.set_title(title, fontsize=9)
    axes.set_xticks([])
    axes.set_yticks([])


def _show_steps(step_axes, steps):
    """Draw each preprocessing step {name: 2-D array} in its own numbered panel, in order;
    the panels left over stay blank."""
    for axes in step_axes[len(steps):]:
        axes.set_axis_off()
    for number, (axes, (name, picture)) in enumerate(zip(step_axes, steps.items()), start=1):
        _show_image(axes, picture, f"{number}. {name} {tuple(np.shape(picture))}")
        if not np.any(picture):  # an all-black mask would look like a drawing error
            axes.text(0.5, 0.5, f"no {name} found", ha="center", va="center", color="white",
                      fontsize=10, transform=axes.transAxes)


def plot_prediction(original, x28, probabilities, path, steps=None, show=False, reason=None,
                    class_names=None):
    """Draw the original image, the 28x28 input the network saw and its ten probabilities.

    original: the image as read (h, w) grey or (h, w, 3|4) colour; x28: (28, 28) or (784,) in [0, 1],
    white digit on black, or None when no digit was found (then `reason` says why, if given);
    probabilities: (10,) or None.
    steps: optional dict {name: 2-D array} of intermediate pictures (e.g. 'gray', 'ink mask',
    '28x28 input'), drawn in order in extra rows of up to 6 panels above the result.
    The picture is 800 pixels wide and 360 + 200 * step_rows pixels high. class_names: ten names
    for the bars and the answer instead of the digits 0..9.
    """
    _check_png_path(path)
    steps = dict(steps or {})
    step_rows = -(-len(steps) // 6)  # ceil(len / 6)
    if x28 is not None and probabilities is None:
        raise ValueError("probabilities are missing: give the network's (10,) output for the 28x28 input")

    figure = _new_figure(800, 360 + 200 * step_rows, show)
    if step_rows:
        steps_part, result_part = figure.subfigures(2, 1, height_ratios=[200 * step_rows, 360])
        _show_steps(steps_part.subplots(step_rows, 6, squeeze=False).ravel(), steps)
    else:
        result_part = figure
    original_axes, input_axes, bar_axes = result_part.subplots(1, 3, width_ratios=[1, 1, 1.6])

    original = np.asarray(original)
    _show_image(original_axes, original, f"your image ({original.shape[1]} x {original.shape[0]} px)")
    if x28 is None:
        input_axes.set_axis_off()
        why = "\n".join(textwrap.wrap(f"({reason or 'the image looks empty'})", 36))
        found_nothing = "nothing found" if class_names else "no digit found"
        input_axes.text(0.5, 0.5, found_nothing + "\n" + why, ha="center", va="center",
                        transform=input_axes.transAxes, fontsize=11, color="tab:red")
        bar_axes.set_axis_off()
        figure.suptitle(f"{found_nothing}: nothing to recognise")
        return _save_figure(figure, path)

    _show_image(input_axes, np.asarray(x28, dtype=np.float32).reshape(28, 28), "what the network saw (28x28)")
    probabilities = np.asarray(probabilities, dtype=float).ravel()   # (10,)
    digit = int(probabilities.argmax())
    colours = ["tab:gray"] * len(probabilities)
    colours[digit] = "tab:orange"                                    # the answer stands out
    bar_axes.bar(range(len(probabilities)), probabilities, color=colours)
    bar_axes.text(digit, probabilities[digit], f"{100 * probabilities[digit]:.1f} %", ha="center", va="bottom",
                  fontsize=9)
    bar_axes.set_xticks(range(len(probabilities)))
    if class_names:
        bar_axes.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    bar_axes.set_ylim(0, 1.12)  # room for the percentage above a bar of height 1
    bar_axes.set_xlabel("class" if class_names else "digit")
    bar_axes.set_ylabel("probability")
    bar_axes.set_title("the network's answer", fontsize=9)
    answer = class_names[digit] if class_names else digit
    figure.suptitle(f"prediction: {answer} ({100 * probabilities[digit]:.1f} % sure)")
    return _save_figure(figure, path)


def plot_digits(images, titles, path, columns=8, show=False):
    """Draw digits in a grid of `columns`, each with its title above (800 px wide, 40 + 110 px per row).

    images: (k, 784) or (k, 28, 28), white digit on black in [0, 1]; titles: k strings, e.g. the
    labels, or "original" / "distorted" for a digit beside its distorted copies.
    """
    _check_png_path(path)
    images = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles: give one title per image")
    rows = max(1, -(-len(images) // columns))  # ceil(k / columns)
    figure = _new_figure(800, 40 + 110 * rows, show)
    for index, axes in enumerate(figure.subplots(rows, columns, squeeze=False).ravel()):
        axes.set_axis_off()
        if index < len(images):
            axes.imshow(images[index], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes.set_title(titles[index], fontsize=9)
    return _save_figure(figure, path)


def plot_probabilities(images, probabilities, path, show=False):
    """Draw up to 8 digits, each above the bars of its ten probabilities (800 x 360 px PNG).

    images: (k, 784) or (k, 28, 28), white digit on black in [0, 1]; probabilities: (k, 10),
    e.g. predict_proba's. The most probable digit's bar is orange.
    """
    _check_png_path(path)
    images = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)[:8]
    probabilities = np.asarray(probabilities, dtype=float)[:8]
    figure = _new_figure(800, 360, show)
    grid = figure.subplots(2, len(images), squeeze=False)
    for k, (image, p) in enumerate(zip(images, probabilities)):
        grid[0, k].imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        grid[0, k].set_axis_off()
        colours = ["tab:orange" if digit == p.argmax() else "tab:gray" for digit in range(10)]
        grid[1, k].bar(range(10), p, color=colours)
        grid[1, k].set_ylim(0, 1)
        grid[1, k].set_xticks(range(10), [str(digit) for digit in range(10)], fontsize=6)
        grid[1, k].tick_params(labelleft=k == 0)  # one probability scale, on the left
    figure.suptitle("the probability of each digit, P = softmax(Z)")
    return _save_figure(figure, path)


def plot_number(original, digits, path, steps=None, show=False):
    """Draw the image with a numbered box around each digit found (reading order), and below it
    each digit's 28x28 input, the digit read and its probability (an unsure one in red).

    original: the image (h, w) gray or (h, w, 3|4) colour; digits: predict_number's
    steps['digits'] (boxes in the pixels of `original`); steps: optional {name: 2-D array} drawn
    in a first row, as in plot_prediction. The picture is 800 pixels wide.
    """
    from matplotlib.patches import Rectangle
    _check_png_path(path)
    steps = dict(steps or {})
    per_row = 10
    tile_rows = -(-len(digits) // per_row)
    heights = ([200] if steps else []) + [360] + [130] * tile_rows
    figure = _new_figure(800, sum(heights), show)
    parts = figure.subfigures(len(heights), 1, height_ratios=heights)
    parts = list(np.atleast_1d(parts))
    if steps:
        _show_steps(parts.pop(0).subplots(1, max(len(steps), 6), squeeze=False).ravel(), steps)
    image_axes = parts.pop(0).subplots()
    original = np.asarray(original)
    _show_image(image_axes, original, f"your image ({original.shape[1]} x {original.shape[0]} px)")
    for number, digit in enumerate(digits, start=1):
        top, bottom, left, right = digit["box"]
        sure = float(digit["probabilities"].max()) >= UNSURE
        colour = "tab:orange" if sure else "tab:red"
        image_axes.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1,
                                       fill=False, edgecolor=colour, linewidth=1.5))
        image_axes.text(left, top - 1, str(number), color=colour, fontsize=8, ha="left", va="bottom")
    for row in range(tile_rows):
        tile_axes = parts[row].subplots(1, per_row, squeeze=False).ravel()
        for axes in tile_axes:
            axes.set_axis_off()
        for axes, number in zip(tile_axes, range(row * per_row, min(len(digits), (row + 1) * per_row))):
            digit = digits[number]
            p = float(digit["probabilities"].max())
            _show_image(axes, digit["x28"], "")
            axes.set_title(f"{number + 1}: {digit['digit']}\n{100 * p:.1f} %", fontsize=8,
                           color="black" if p >= UNSURE else "tab:red")
    text = "".join(str(d["digit"]) if k == 0 or d["row"] == digits[k - 1]["row"] else " / " + str(d["digit"])
                   for k, d in enumerate(digits))
    figure.suptitle(f"number: {text} ({len(digits)} digits)")
    return _save_figure(figure, path)


def save_gray_png(image, path):
    """Write a 2-D array of gray values in [0, 1] as an 8-bit greyscale PNG, atomically."""
    from PIL import Image
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)   # [0, 1] -> 0..255
    write_atomically(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))
    return path


def save_digit_png(image28, path, scale=10):
    """Write one 28x28 digit as an ordinary 8-bit grey PNG, (28*scale) x (28*scale) pixels, black digit on white.

    Black on white, like a digit written on paper or drawn in a paint program: a new user's own
    pictures look like that, so trying `predict` on this file takes the same path as theirs
    (light background detected and inverted). Each pixel becomes a scale x scale square, so averaging
    those squares gives back the 28x28 values exactly (up to the 1/255 steps of 8 bits).
    """
    _check_png_path(path)
    image28 = np.asarray(image28, dtype=np.float32).reshape(28, 28)  # white digit on black, in [0, 1]
    paper = 1.0 - np.clip(image28, 0.0, 1.0)                          # black digit on white
    big = np.repeat(np.repeat(paper, scale, axis=0), scale, axis=1)   # (28, 28) -> (28*scale, 28*scale)
    return save_gray_png(big, path)


def save_sample_digits(images, labels, folder, class_names=None):
    """Write one test image of each digit 0..9 to folder as <label>.png; return the paths.

    Named for their digit, so `predict FOLDER` also scores itself ("10 of 10 correct"). With
    class_names the name follows the label: 0_t-shirt-top.png, 1_trouser.png, ... (scored the same way).

    images: (m, 784) or (m, 28, 28) in [0, 1]; labels: (m,). The first image of each digit is taken,
    so the same files come out every time. The folder is created if needed.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for digit in range(10):
        found = np.flatnonzero(labels == digit)
        name = f"{digit}.png"
        if class_names:
            name = f"{digit}_{class_names[digit].lower().replace('/', '-').replace(' ', '-')}.png"
        if len(found):
            paths.append(save_digit_png(images[found[0]], os.path.join(folder, name)))
    return paths


def starting_weights(W1, meta):
    """The first layer's random start, rebuilt from the seed saved with the model; or None.

    A check that the rebuilt start is the real one: MNIST's border pixels are always 0, so no
    gradient reaches their weights and training only shrinks them, all by the same factor
    (weight decay). There, W1 must be a positive multiple of the start: correlation near 1.
    Elsewhere (another NumPy's random numbers, distortions that put ink on the border) it is
    not, and the weights are drawn as they are.
    """
    seed = (meta.get("settings") or {}).get("seed")
    if seed is None:
        return None
    start = init_params(meta["sizes"], meta["activation"], seed)[0][0]
    border = np.ones((28, 28), dtype=bool)
    border[1:-1, 1:-1] = False
    trained, initial = W1[border.ravel()].ravel(), start[border.ravel()].ravel()
    if np.std(trained) == 0 or np.corrcoef(trained, initial)[0, 1] < 0.99:
        return None
    return start


def add_weights_command(add, shared):
    """`weights` and its options (add and shared: see build_parser)."""
    p = add("weights", "draw the first layer's weights: what each hidden unit looks for",
            shared.saved_model, shared.show)
    p.add_argument("--out", default="weights.png", metavar="FILE.png",
                   help="picture to write (default: %(default)s)")
    p.set_defaults(run=command_weights, paths={"model": "model to read", "out": "picture to write"})


def command_weights(args):
    Ws, _, meta, _, _ = load_model_and_dataset(args)
    start = starting_weights(Ws[0], meta)
    print(f"wrote {plot_weights(Ws[0], args.out, show=args.show, start=start)}")
    return 0


def add_samples_command(add, shared):
    """`samples` and its options (add and shared: see build_parser)."""
    p = add("samples", "write a few test digits as PNG files, to try `predict` on", shared.images,
            shared.data)
    p.add_argument("--out", metavar="DIR",
                   help="folder to write them to (default: samples, for Fashion-MNIST "
                        "samples/fashion)")
    p.set_defaults(run=command_samples, paths={"data_dir": "data folder", "out": "folder to write"})


def command_samples(args):
    """save_sample_digits, one file at a time: a file that cannot be written is reported and
    the others are still written; the exit status is 2 at the end if any failed."""
    dataset = with_dataset_defaults(args)
    if args.out is None:
        args.out = "samples" if dataset == "mnist" else os.path.join("samples", dataset)
    _, _, X_test, y_test = load_dataset(args.data_dir, dataset=dataset)
    if y_test is None:
        raise UserError("the test images have no labels; use the IDX files")
    class_names = None if dataset == "mnist" else DATASETS[dataset]["classes"]
    os.makedirs(args.out, exist_ok=True)  # checked before: see check_folder_to_write
    written, failed = [], 0
    for label in range(10):
        try:
            written += save_sample_digits(X_test[y_test == label][:1], [label], args.out,
                                          class_names)
        except (OSError, ValueError) as e:  # e.g. a folder named 3.png in the way
            print(f"error: {os_error_text(e) if isinstance(e, OSError) else e}", file=sys.stderr)
            failed += 1
    if class_names is None:
        print(f"wrote {len(written)} test digits to {args.out}/ (one per digit, named for it); "
              f"try:\n  python mnist_from_scratch.py predict {args.out}")
    else:
        print(f"wrote {len(written)} {DATASETS[dataset]['title']} test images to {args.out}/ "
              f"(one per class, named for it); try:\n  python mnist_from_scratch.py predict "
              f"--model {MODEL_FOR_DATASET[dataset]} {args.out}")
    if failed:
        what = "digits" if class_names is None else "images"
        print(f"error: {failed} of 10 {what} could not be written (see above)", file=sys.stderr)
    return 2 if failed else 0


def example_photo(size=600):
    """A pen-written 4 on ruled paper under uneven light, as a phone photo of one would look.

    Drawn here from two strokes (no MNIST image is used), for the README's prediction picture
    and for trying `predict` on something that does not look like MNIST at all.
    """
    ink = np.zeros((size, size), np.float32)
    for stroke in ([(230, 110), (160, 370), (430, 365)], [(365, 170), (385, 500)]):
        ink = render_stroke(ink, stroke, radius=4)      # a thin ballpoint line, 9 px wide
    rows, cols = np.mgrid[0:size, 0:size] / size
    paper = 0.95 - 0.3 * rows * cols                   # the light falls off towards one corner
    paper[np.arange(size) % 50 < 2] *= 0.8             # printed ruled lines every 50 px
    return paper * (1 - 0.85 * ink)                    # dark ink on light paper


def add_pictures_command(add, shared):
    """`pictures` and its options (add and shared: see build_parser)."""
    p = add("pictures", "draw the README's pictures (training curve, confusion matrix, weights, "
                        "a prediction, the drawing window) from a trained model", shared.saved_model,
            shared.data)
    p.add_argument("--out", metavar="DIR",
                   help="folder to write them to (default: docs, for a Fashion-MNIST model "
                        "docs/fashion)")
    p.set_defaults(run=command_pictures, paths={"data_dir": "data folder", "model": "model to read",
                                                "out": "folder to write"})


def command_pictures(args):
    """Draw the README's pictures from a trained model, the drawing window of section [13]
    included; all but the screenshot of the served page, which needs a browser (docs/results.md
    says how it is made)."""
    Ws, bs, meta, dataset, class_names = load_model_and_dataset(args)
    activation = meta["activation"]
    if args.out is None:  # each data set's pictures in their own folder: none overwrites another's
        args.out = "docs" if dataset == "mnist" else os.path.join("docs", dataset)
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    written = []
    if meta.get("history"):
        written.append(plot_history(meta["history"], out("training.png")))
    _, _, X_test, y_test = load_dataset(args.data_dir, dataset=dataset)
    if y_test is not None:
        result = evaluate(X_test, y_test, Ws, bs, activation)
        written.append(plot_confusion(result["confusion"], out("confusion.png"),
                                      class_names=class_names))
    written.append(plot_weights(Ws[0], out("weights.png"), start=starting_weights(Ws[0], meta)))
    if dataset != "mnist":  # the example photo and the drawing window show digits
        print("wrote " + ", ".join(written))
        return 0
    photo = save_gray_png(example_photo(), out("example_photo.png"))
    written.append(photo)
    gray, alpha = read_image(photo)
    x, p, steps = predict_image(gray, alpha, Ws, bs, activation)
    panels = {name: steps[name] for name in ("ink", "mask", "cropped") if name in steps}
    written.append(plot_prediction(gray, x, p, out("prediction.png"), steps=panels))
    # The drawing window, drawn off screen with a "2" traced along these points.
    pad = DrawingPad(lambda X: predict_proba(X, Ws, bs, activation), image_to_mnist)
    figure = _new_figure(1000, 460, layout=None)  # the window's own layout, as on screen
    pad.build_figure(figure)
    arc = [(140 + 62 * math.cos(a), 105 - 58 * math.sin(a)) for a in np.radians(np.arange(165, -35, -5))]
    for point in arc + [(75, 235), (215, 235)]:
        pad.add_ink(point)
    pad.update(force=True)
    write_atomically(out("draw.png"), lambda f: figure.savefig(f, format="png", dpi=PLOT_DPI))
    written.append(out("draw.png"))
    print("wrote " + ", ".join(written))
    return 0


# %% [13] Draw a digit and watch the network guess, live
#
# `python mnist_from_scratch.py draw` opens a window with three panels:
#
#   a large black canvas  -> the 28x28 image the network sees -> ten bars, P(digit = 0..9)
#
# Draw with the left mouse button; the bars follow your pen while you draw. Right button or `c`
# clears, `s` saves the drawing as drawing-N.png (which `predict` reads back the same way), `q` quits.
#
# Two ideas carry this section:
#
# 1. The pen. MNIST strokes are about 2 px wide inside the digit's 20x20 box (2 * ink area /
#    ink outline, median over MNIST training images), i.e. ~1/10 of the digit's height. A digit
#    drawn across ~3/4 of a 280x280 canvas is ~200 px tall, so the pen must be ~20-28 px wide:
#    radius 14 px (canvas/20) gives 2.1-2.6 px after shrinking to 20 px. A thinner pen would hand
#    the network faint, broken strokes it never saw in training. The pen is round and
#    anti-aliased: a pixel's ink is how far inside the pen's edge it lies, over a 1-px soft rim,
#    the same grey edges that MNIST got from its own anti-aliasing.
#
# 2. One code path. The canvas goes through exactly the preprocessing `predict` uses for a photo
#    (crop to the ink, fit into 20x20, centre by mass in 28x28), so what you see in the middle
#    panel is what the network is given, and a saved drawing is recognised the same way later.
#
# The window keeps state (the canvas, the stroke in progress), as a GUI has to remember what
# happened between mouse events; the lesson's functions never do. All the drawing itself is done by the
# pure function `render_stroke`, and `DrawingPad`'s handlers take plain objects with matplotlib's
# event attributes (button, xdata, ydata, key, inaxes), so they run without any window at all.


CANVAS_SIZE = 280           # 10x the 28x28 MNIST image, large enough to draw comfortably
PEN_RADIUS = 14             # canvas/20: ~2-2.6 px strokes once the digit is shrunk to 20 px, like MNIST
SECONDS_BETWEEN_UPDATES = 0.05   # show + predict at most 20x a second: an update takes ~5-20 ms,
                                 # so mouse events keep most of the time and the pen never lags


def render_stroke(canvas, points, radius):
    """Draw a polyline with a round, anti-aliased pen; return a new canvas (input left untouched).

    canvas: (H, W) float32 in [0, 1], white ink (1.0) on black (0.0).
    points: sequence of (x, y) in pixel coordinates, x = column, y = row, pixel centres at integers
            (matplotlib's imshow uses the same convention, so mouse positions need no conversion).
    radius: pen radius in pixels.

    The ink of a pixel with centre p is its coverage by the pen swept along each segment AB:
        t = clip((p - A)·(B - A) / |B - A|², 0, 1)      # closest point on the segment is A + t (B - A)
        d = |p - (A + t (B - A))|                        # distance from p to the segment
        coverage = clip(radius + 0.5 - d, 0, 1)          # 1 inside, 0 outside, linear over a 1-px rim
    Ink never adds up where segments overlap: a pixel keeps the darkest ink it got (np.maximum),
    like a real pen passing twice over the same spot.
    """
    canvas = np.array(canvas, dtype=np.float32)       # a copy: the caller's array is not changed
    height, width = canvas.shape
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    segments = zip(points, points[1:]) if len(points) > 1 else [(points[0], points[0])]
    reach = radius + 0.5                              # farthest distance that still gets some ink
    for A, B in segments:
        # Only the segment's bounding box (grown by the pen) can get ink: for a short mouse move this
        # is a few hundred pixels instead of the whole canvas, which keeps drawing fast.
        left = max(int(np.floor(min(A[0], B[0]) - reach)), 0)
        right = min(int(np.ceil(max(A[0], B[0]) + reach)) + 1, width)
        top = max(int(np.floor(min(A[1], B[1]) - reach)), 0)
        bottom = min(int(np.ceil(max(A[1], B[1]) + reach)) + 1, height)
        if left >= right or top >= bottom:
            continue                                  # segment entirely off the canvas
        y, x = np.mgrid[top:bottom, left:right].astype(np.float32)   # (h, w) pixel centres
        AB = B - A
        length_squared = float(AB @ AB)
        if length_squared == 0.0:
            t = np.zeros_like(x)                      # a single point: the pen is a round dot
        else:
            t = np.clip(((x - A[0]) * AB[0] + (y - A[1]) * AB[1]) / length_squared, 0.0, 1.0)
        d = np.hypot(x - (A[0] + t * AB[0]), y - (A[1] + t * AB[1]))  # (h, w) distance to segment
        coverage = np.clip(radius + 0.5 - d, 0.0, 1.0)
        # out= writes into this function's own copy, rewriting only the box
        np.maximum(canvas[top:bottom, left:right], coverage, out=canvas[top:bottom, left:right])
    return canvas


def next_free_path(folder, stem="drawing", suffix=".png"):
    """First of folder/drawing-1.png, drawing-2.png, ... that does not exist yet (never overwrite)."""
    number = 1
    while os.path.exists(os.path.join(folder, f"{stem}-{number}{suffix}")):
        number += 1
    return os.path.join(folder, f"{stem}-{number}{suffix}")


class DrawingPad:
    """The drawing window's state: the canvas, the stroke in progress, and the latest prediction.

    to_mnist(canvas) -> (x28 or None, steps): the same preprocessing `predict` uses; None = no ink.
    network(X) -> (m, 10): the trained network's probabilities, X of shape (m, 784).
    clock: a function returning seconds, used to space out the updates (tests pass a fake one).
    close_window: called on `q` (the app passes a function that closes the figure).

    The handlers accept any objects with matplotlib's event attributes (button, xdata, ydata,
    key, inaxes). Events that are not over the canvas axes (`inaxes is not self.canvas_axes`) are
    ignored for drawing, so clicks on the bars do nothing.
    """

    def __init__(self, network, to_mnist, canvas_size=CANVAS_SIZE, pen_radius=PEN_RADIUS,
                 seconds_between_updates=SECONDS_BETWEEN_UPDATES, clock=None, close_window=None,
                 save_folder="."):
        self.network = network
        self.to_mnist = to_mnist
        self.pen_radius = pen_radius
        self.seconds_between_updates = seconds_between_updates
        self.clock = clock or time.monotonic
        self.close_window = close_window or (lambda: None)
        self.save_folder = save_folder
        self.canvas = np.zeros((canvas_size, canvas_size), dtype=np.float32)
        self.last_point = None          # (x, y) of the pen while the left button is held, else None
        self.pen_down = False
        self.needs_update = False       # ink changed since the panels were last redrawn
        self.last_update_time = -np.inf
        self.x28 = None                 # what the network saw last, (28, 28) or None
        self.probabilities = np.zeros(10, dtype=np.float32)
        self.figure = None              # these are set by build_figure; without them the pad
        self.canvas_axes = None         # still draws and predicts, it just has nothing to show
        self.canvas_image = self.seen_image = self.bars = self.guess_title = None
        self.background = None          # saved picture of the static parts, when blitting

    # ------------------------------------------------------------------ drawing
    def is_over_canvas(self, event):
        return event.inaxes is self.canvas_axes and event.xdata is not None and event.ydata is not None

    def add_ink(self, point):
        """Extend the current stroke to point (x, y): a dot if the stroke just started."""
        stroke = [point] if self.last_point is None else [self.last_point, point]
        self.canvas = render_stroke(self.canvas, stroke, self.pen_radius)
        self.last_point = point
        self.needs_update = True

    def on_press(self, event):
        if event.button == 3:                       # right button: start over
            self.clear()
        elif event.button == 1 and self.is_over_canvas(event):
            self.pen_down = True
            self.last_point = None
            self.add_ink((event.xdata, event.ydata))
            self.update()

    def on_motion(self, event):
        if not self.pen_down:
            return
        if not self.is_over_canvas(event):
            self.last_point = None                  # left the canvas: lift the pen until it comes back
            return
        self.add_ink((event.xdata, event.ydata))
        self.update()                               # throttled: at most every seconds_between_updates

    def on_release(self, event):
        if event.button == 1 and self.pen_down:
            if self.is_over_canvas(event):
                self.add_ink((event.xdata, event.ydata))   # the stroke ends where the button comes up
            self.pen_down = False
            self.last_point = None
            self.update(force=True)                 # the final stroke is always shown at once

    def on_key(self, event):
        if event.key == "c":
            self.clear()
        elif event.key == "s":
            # white ink on black, one pixel per canvas pixel: `predict` reads it as it was drawn
            path = save_gray_png(self.canvas, next_free_path(self.save_folder))
            print(f"saved {path}  (try: python mnist_from_scratch.py predict {path})", flush=True)
        elif event.key == "q":
            self.close_window()

    def clear(self):
        self.canvas = np.zeros_like(self.canvas)
        self.last_point = None
        self.needs_update = True
        self.update(force=True)

    # ------------------------------------------------------------------ predicting and showing
    def update(self, force=False):
        """Recompute the 28x28 image and the probabilities and redraw, unless nothing changed or
        (when not forced) the last update was less than seconds_between_updates ago.
        Returns True if it updated. A GUI timer calls this too, so a pause mid-stroke still shows."""
        now = self.clock()
        if not self.needs_update or (not force and now - self.last_update_time < self.seconds_between_updates):
            return False
        self.needs_update = False
        self.last_update_time = now
        self.x28, _steps = self.to_mnist(self.canvas)
        if self.x28 is None:                        # empty canvas: nothing to guess
            self.probabilities = np.zeros(10, dtype=np.float32)
        else:
            X = self.x28.reshape(1, 784).astype(np.float32)          # (28, 28) -> (1, 784)
            self.probabilities = np.asarray(self.network(X), dtype=np.float32).reshape(10)
        self.show()
        return True

    def build_figure(self, figure):
        """Lay out the three panels on an empty matplotlib Figure and remember their artists."""
        grid = figure.add_gridspec(1, 3, width_ratios=[2.0, 1.0, 1.6], left=0.03, right=0.97,
                                   bottom=0.13, top=0.88, wspace=0.3)
        self.figure = figure
        self.canvas_axes = figure.add_subplot(grid[0])
        self.canvas_image = self.canvas_axes.imshow(self.canvas, cmap="gray", vmin=0.0, vmax=1.0)
        self.canvas_axes.set_title("draw here (left button)", fontsize=11)
        self.canvas_axes.set_xticks([])
        self.canvas_axes.set_yticks([])
        self.canvas_axes.set_xlabel("right click or c: clear    s: save PNG    q: quit", fontsize=9)

        seen_axes = figure.add_subplot(grid[1])
        self.seen_image = seen_axes.imshow(np.zeros((28, 28), np.float32), cmap="gray",
                                           vmin=0.0, vmax=1.0, interpolation="nearest")
        seen_axes.set_title("what the network sees\n(28x28)", fontsize=10)
        seen_axes.set_xticks([])
        seen_axes.set_yticks([])

        bar_axes = figure.add_subplot(grid[2])
        self.bars = bar_axes.bar(np.arange(10), np.zeros(10), color="tab:gray")
        bar_axes.set_xticks(np.arange(10))
        bar_axes.set_ylim(0.0, 1.0)
        bar_axes.set_xlabel("digit")
        bar_axes.set_ylabel("probability")
        self.guess_title = bar_axes.set_title("draw a digit", fontsize=11)
        self.show()
        return figure

    def show(self):
        """Copy the canvas, the 28x28 image and the probabilities into the figure's artists."""
        if self.figure is None:
            return
        self.canvas_image.set_data(self.canvas)
        self.seen_image.set_data(np.zeros((28, 28), np.float32) if self.x28 is None else self.x28)
        guess = int(np.argmax(self.probabilities))
        for digit, (bar, p) in enumerate(zip(self.bars, self.probabilities)):
            bar.set_height(float(p))
            bar.set_color("tab:orange" if digit == guess and self.x28 is not None else "tab:gray")
        self.guess_title.set_text("draw a digit" if self.x28 is None
                                  else f"guess: {guess}  ({100 * self.probabilities[guess]:.0f}%)")
        if self.background is None:
            self.figure.canvas.draw_idle()          # full redraw, once the GUI is idle
        else:                                       # blitting: repaint only what changed
            self.figure.canvas.restore_region(self.background)
            for artist in self.live_artists():
                self.figure.draw_artist(artist)
            self.figure.canvas.blit(self.figure.bbox)

    def live_artists(self):
        return [self.canvas_image, self.seen_image, *self.bars, self.guess_title]

    def enable_blitting(self):
        """Make updates cheap in a GUI window: a full redraw of the figure (axes, ticks, labels)
        takes tens of milliseconds, repainting the canvas, the 28x28 image and the bars on a saved
        picture of everything else takes a few. Marked `animated`, the live artists are left out
        of full redraws; on_full_draw then saves that background and paints them on top."""
        if not self.figure.canvas.supports_blit:
            return
        for artist in self.live_artists():
            artist.set_animated(True)
        self.figure.canvas.mpl_connect("draw_event", self.on_full_draw)

    def on_full_draw(self, event):
        """After every full redraw (the first one, a window resize): save the background and
        paint the live artists over it."""
        self.background = event.canvas.copy_from_bbox(self.figure.bbox)
        for artist in self.live_artists():
            artist.draw(event.renderer)


NON_INTERACTIVE_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}
NO_DISPLAY_MESSAGE = ("no display to open a window on (the draw command needs a desktop session); "
                      "to recognise a digit from an image file instead, run: "
                      "python mnist_from_scratch.py predict IMAGE.png")


def run_drawing_app(network, to_mnist):
    """Open the drawing window and block until it is closed.

    Raises UserError (one line, pointing to `predict`) where no window can be opened: Linux
    without $DISPLAY/$WAYLAND_DISPLAY, a non-interactive matplotlib backend, or a failing GUI toolkit.
    """
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError(NO_DISPLAY_MESSAGE)
    import matplotlib
    # Hide the toolbar: its pan/zoom modes would steal the mouse from the pen.
    with matplotlib.rc_context({"toolbar": "None"}):
        import matplotlib.pyplot as plt           # picks the first GUI backend that works (TkAgg, Qt, ...)
        if plt.get_backend().lower() in NON_INTERACTIVE_BACKENDS:
            raise UserError(NO_DISPLAY_MESSAGE)
        try:
            figure = plt.figure(figsize=(10.0, 4.6))
        except Exception as error:                # e.g. Tk cannot connect to the X server
            raise UserError(NO_DISPLAY_MESSAGE) from error
        pad = DrawingPad(network, to_mnist, close_window=lambda: plt.close(figure))
        pad.build_figure(figure)
        pad.enable_blitting()
        figure.canvas.manager.set_window_title("Draw a digit - mnist_from_scratch")
        # Switch off matplotlib's own keyboard shortcuts (s = save dialog, c = back, l = log scale,
        # ...): in this window the keys belong to the pad.
        figure.canvas.mpl_disconnect(figure.canvas.manager.key_press_handler_id)
        figure.canvas.mpl_connect("button_press_event", pad.on_press)
        figure.canvas.mpl_connect("motion_notify_event", pad.on_motion)
        figure.canvas.mpl_connect("button_release_event", pad.on_release)
        figure.canvas.mpl_connect("key_press_event", pad.on_key)
        # Mouse moves only add ink (cheap); the redraw + prediction is throttled in pad.update.
        # This timer catches the last bit of a stroke when the pen pauses without being lifted.
        timer = figure.canvas.new_timer(interval=int(1000 * SECONDS_BETWEEN_UPDATES))
        timer.add_callback(pad.update)
        timer.start()
        plt.show()
        timer.stop()
    return pad


def add_draw_command(add, shared):
    """`draw` and its options (add and shared: see build_parser)."""
    p = add("draw", "draw a digit with the mouse and watch the network's guess change live",
            shared.saved_model)
    p.set_defaults(run=command_draw, paths={"model": "model to read"})


def command_draw(args):
    Ws, bs, meta, dataset, _ = load_model_and_dataset(args)
    activation = meta["activation"]
    run_drawing_app(lambda X: predict_proba(X, Ws, bs, activation),
                    lambda canvas: prepare_image(canvas, None, dataset))  # the same as predict
    return 0


# %% [14] Serving the network over HTTP
#
# `python mnist_from_scratch.py serve` makes the network a small web service, for everyone who has
# a browser but no desktop to open the `draw` window in (a remote server, a JupyterHub, a lab
# machine, a phone on the same network):
#
#   GET  /         one page: a canvas to draw on with mouse, pen or finger, the 28x28 image the
#                  network saw, the ten probabilities as bars while you draw, and a photo upload
#   POST /predict  a PNG or JPEG in the body -> {"digit": 7, "probabilities": [10 numbers],
#                  "input28": [[28 x 28 numbers]], "number": "7", "digits": [...]}, or
#                  {"digit": null, "reason": "..."}; a number of several digits is read whole
#                  (section [11b]): "number": "2026", "digits": one {"digit", "probabilities",
#                  "box"} each
#   GET  /health   the model's layer sizes, activation and test accuracy (from its meta)
#
# It uses only the standard library's http.server, and four ideas carry it:
#
# 1. One code path. A request body is decoded by `read_image` (handed the bytes as a file
#    object instead of a file name) and prepared by `image_to_mnist`, exactly like a photo given
#    to `predict` and a drawing in the `draw` window: the page's canvas is a 280x280 black square
#    with a white pen of radius 14, the same canvas and pen as the window (section [13]).
# 2. Safe by default. It listens on 127.0.0.1 (this machine only) unless --host says otherwise;
#    it serves its one page and its API, never a file from disk; a body larger than
#    MAX_BODY_BYTES is refused from its Content-Length before it is read, and an image with more
#    than MAX_IMAGE_PIXELS from its header before it is decoded; every error is a JSON answer
#    with its HTTP status, never a traceback; the server's log gets one line per request.
# 3. Shared, read-only state. The model is loaded once, before the first request; its arrays are
#    made read-only, and everything a request computes lives in that request's own variables
#    (`read_image`, `image_to_mnist` and `predict_proba` are pure functions), so the threads of
#    ThreadingHTTPServer (one per connection) can answer at the same time without locks.
# 4. Bounded, whoever the clients are. A request has SECONDS_TO_SEND_A_REQUEST for its headers
#    and body together (then 408); at most MAX_CONNECTIONS are handled at once (the one waiting
#    longest for a request makes room for a new one, or 503 at once when all are being
#    answered); images are shrunk as they are read, and no more than PIXELS_DECODED_AT_ONCE
#    pixels are decoded at a time. On a loopback address only requests for this machine's
#    names are answered (--allow-host adds a proxy's); the page finds its API beside itself,
#    so it works under any path a proxy serves it at. Control characters never reach the log.
#
# The server is two classes, as http.server wants them: DigitServer holds what every request
# shares (the model, the page, the limits, the log), and DigitRequestHandler answers the
# requests of one connection, reaching all that as self.server.

import contextlib
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVE_HOST = "127.0.0.1"            # this machine only; --host 0.0.0.0 opens it to the network
SERVE_PORT = 8000
MAX_BODY_BYTES = 10 * 1024 * 1024   # 10 MB: a 12-megapixel phone JPEG is 2-6 MB, a screenshot PNG less
MAX_IMAGE_PIXELS = 25_000_000       # a 24-megapixel camera photo (6000x4000) fits; a PNG of a few
                                    # kB can claim billions of pixels, gigabytes once decoded
PIXELS_DECODED_AT_ONCE = 2 * MAX_IMAGE_PIXELS   # two of the largest images (decoded: at most 4
                                    # bytes a pixel, 200 MB), or hundreds of drawings, at a time
LARGE_IMAGE_PIXELS = 1_000_000      # above: a photo, not a drawing of the page (280x280)
SECONDS_TO_SEND_A_REQUEST = 30      # headers and body together: 10 MB over a slow 3 Mbit/s phone link
MAX_CONNECTIONS = 64                # handled at once, a thread each: a class of 30 with a tab or two each
MAX_DISCARDED_BYTES = 32 * 1024 * 1024   # a refused body is read and dropped up to this size, so
                                    # that the client, still sending, gets to read the refusal
IMAGE_TYPES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}  # type -> first bytes
# Control characters in a request (an ESC that recolours the terminal, a CR that forges a whole
# line) are written into the log as \xNN.
LOG_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]}

SERVE_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Draw a digit - mnist_from_scratch</title>
<style>
  * { box-sizing: border-box; }
  body { margin: 0; padding: 12px; font: 16px/1.4 system-ui, sans-serif; background: #f3f3f3; color: #222; }
  h1 { font-size: 1.15rem; margin: 0 0 10px; }
  main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
  section { width: min(calc(100vw - 24px), 360px); }
  #canvas { display: block; width: 100%; height: min(calc(100vw - 24px), 360px); background: #000;
            border-radius: 8px; touch-action: none; cursor: crosshair; }
  .buttons { display: flex; gap: 8px; margin-top: 8px; }
  button, #drop { font: inherit; padding: 10px 12px; border: 1px solid #999; border-radius: 8px; background: #fff; }
  button { min-width: 5.5em; }
  #drop { flex: 1; text-align: center; color: #555; cursor: pointer; }
  #drop.over { background: #dfe9ff; border-color: #3366cc; }
  #answer { display: flex; align-items: center; gap: 12px; min-height: 84px; }
  #digit { font-size: 64px; font-weight: bold; width: 1.2em; text-align: center; }
  #input28 { width: 84px; height: 84px; image-rendering: pixelated; background: #000; border-radius: 4px; }
  #bars { margin-top: 10px; }
  .bar { display: flex; align-items: center; gap: 8px; height: 26px; }
  .bar b { width: 1em; text-align: right; }
  .track { flex: 1; height: 16px; background: #ddd; border-radius: 4px; overflow: hidden; }
  .fill { height: 100%; width: 0; background: #888; }
  .bar.best .fill { background: #3366cc; }
  .bar span { width: 4.5em; text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>Draw a digit; the network guesses while you draw</h1>
<main>
  <section id="pad">
    <canvas id="canvas" width="280" height="280" aria-label="drawing area"></canvas>
    <div class="buttons">
      <button id="clear" type="button">Clear</button>
      <label id="drop">Drop a photo here, or tap to choose one
        <input id="file" type="file" accept="image/png,image/jpeg" hidden></label>
    </div>
  </section>
  <section id="result">
    <div id="answer">
      <span id="digit">?</span>
      <canvas id="input28" width="28" height="28" title="the 28x28 image the network saw"></canvas>
      <span id="message">draw a digit</span>
    </div>
    <div id="bars"></div>
  </section>
</main>
<script>
"use strict";
const canvas = document.getElementById("canvas"), pen = canvas.getContext("2d");
const input28 = document.getElementById("input28").getContext("2d");
const SIZE = canvas.width;          // 280, the canvas of the draw window
const PEN_RADIUS = 14;              // its pen: strokes about 2 px wide once the digit is 20 px tall
// While drawing, the canvas is sent at most 10 times a second (the draw window updates 20 times,
// without a trip over the network: 10 still looks live) and never twice at once, so a slow or
// busy server gets the next question only when it has answered the last one.
const MS_BETWEEN_QUESTIONS = 100;
// The API beside the page, wherever the page is: /predict, or /user/anna/proxy/8000/predict
// behind a proxy that serves it under a path of its own.
const API = location.origin + location.pathname.replace(/\/?$/, "/") + "predict";
let last = null, changed = false, waiting = false, lastAsked = 0, timer = null, drawing = 0;

const bars = [];
for (let k = 0; k < 10; k++) {
  const row = document.createElement("div");
  row.className = "bar";
  row.innerHTML = "<b>" + k + "</b><div class=track><div class=fill></div></div><span></span>";
  document.getElementById("bars").appendChild(row);
  bars.push(row);
}

function show(answer) {
  const p = answer.probabilities || new Array(10).fill(0);
  document.getElementById("digit").textContent = answer.digit === null || answer.digit === undefined ? "?" : answer.digit;
  document.getElementById("message").textContent = answer.digit === null || answer.digit === undefined
      ? (answer.reason || answer.error || "") : (100 * p[answer.digit]).toFixed(1) + " % sure";
  if (answer.digits && answer.digits.length > 1) {   // a number: every digit and how sure of it
    document.getElementById("digit").textContent = answer.number.replace(/\n/g, " / ");
    document.getElementById("message").textContent = "digits " + answer.digits.map(
        d => (100 * Math.max(...d.probabilities)).toFixed(1) + " %").join(", ");
  }
  bars.forEach((row, k) => {
    row.querySelector(".fill").style.width = (100 * p[k]).toFixed(1) + "%";
    row.querySelector("span").textContent = (100 * p[k]).toFixed(1) + " %";
    row.classList.toggle("best", k === answer.digit);
  });
  const pixels = input28.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const value = answer.input28 ? Math.round(255 * answer.input28[Math.floor(i / 28)][i % 28]) : 0;
    pixels.data.set([value, value, value, 255], 4 * i);
  }
  input28.putImageData(pixels, 0, 0);
}

async function ask(body, type, askedFor) {
  let answer;
  try {
    const response = await fetch(API, {method: "POST", headers: {"Content-Type": type}, body: body});
    answer = await response.json();
  } catch (error) {
    answer = {digit: null, reason: "no answer from the server (" + error.message + ")"};
  }
  if (askedFor === drawing) show(answer);   // an answer about a cleared drawing is dropped
}

function askSoon() {
  if (!changed || waiting || timer) return;
  const wait = lastAsked + MS_BETWEEN_QUESTIONS - Date.now();
  if (wait > 0) { timer = setTimeout(() => { timer = null; askSoon(); }, wait); return; }
  changed = false; waiting = true; lastAsked = Date.now();
  const askedFor = drawing;
  canvas.toBlob(blob => ask(blob, "image/png", askedFor).finally(() => { waiting = false; askSoon(); }), "image/png");
}

function clearCanvas() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, SIZE, SIZE);
  drawing++; changed = false;
  show({digit: null, reason: "draw a digit"});
}

function point(event) {            // CSS pixels on the page -> pixels of the 280x280 canvas
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * SIZE / box.width, (event.clientY - box.top) * SIZE / box.height];
}

function line(from, to) {
  pen.strokeStyle = "#fff"; pen.lineWidth = 2 * PEN_RADIUS; pen.lineCap = "round"; pen.lineJoin = "round";
  pen.beginPath(); pen.moveTo(from[0], from[1]); pen.lineTo(to[0], to[1]); pen.stroke();
  changed = true;
}

canvas.addEventListener("pointerdown", event => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);   // the stroke goes on if the pen leaves the canvas
  last = point(event);
  line(last, last);
  askSoon();
});
canvas.addEventListener("pointermove", event => {
  if (last === null) return;                   // moving without pressing draws nothing
  // A fast pen sends several positions per frame; the browser hands them over together.
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const move of (moves.length ? moves : [event])) { const p = point(move); line(last, p); last = p; }
  askSoon();
});
for (const type of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(type, () => { last = null; askSoon(); });
}

document.getElementById("clear").addEventListener("click", clearCanvas);

function sendPhoto(file) {
  clearCanvas();
  document.getElementById("message").textContent = "reading " + file.name + " ...";
  ask(file, file.type || "application/octet-stream", drawing);
}
const drop = document.getElementById("drop"), picker = document.getElementById("file");
picker.addEventListener("change", () => { if (picker.files.length) sendPhoto(picker.files[0]); picker.value = ""; });
// A photo dropped anywhere on the page is sent (instead of the browser opening it).
document.addEventListener("dragover", event => { event.preventDefault(); drop.classList.add("over"); });
document.addEventListener("dragleave", () => drop.classList.remove("over"));
document.addEventListener("drop", event => {
  event.preventDefault(); drop.classList.remove("over");
  if (event.dataTransfer.files.length) sendPhoto(event.dataTransfer.files[0]);
});
clearCanvas();
</script>
</body>
</html>
"""


class HTTPError(Exception):
    """A request the server refuses: its HTTP status and a one-line message for the client."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def predict_image_bytes(body, Ws, bs, activation="relu", dataset="mnist", room_for=None, typical=None):
    """The answer of POST /predict for the bytes of a PNG or JPEG: read_image -> predict_image,
    the path of `predict` (images prepared for the model's data set).

    Returns {"digit", "probabilities" (10), "input28" (28 x 28), "number", "digits"} (the last
    two for MNIST models, see digits_answer; with several digits, "digit" is the first), or
    {"digit": None, "reason"}.
    Raises HTTPError(400) for bytes that are not a readable image, HTTPError(413) for an image
    with more than MAX_IMAGE_PIXELS. room_for(pixels), if given, is a context manager that
    waits until that many pixels may be decoded (the server's budget of memory for images).
    typical: the model's typical top logit (predict_number).
    """
    from PIL import Image
    too_large = HTTPError(413, f"the image has more than {MAX_IMAGE_PIXELS / 1e6:g} megapixels, "
                               f"the limit: send a smaller one")
    try:  # the header only (no pixels decoded yet): how large would the image be?
        with Image.open(io.BytesIO(body)) as header:
            width, height = header.size
    except Image.DecompressionBombError:   # Pillow's own limit, far above ours, refused at once
        raise too_large from None
    except Exception:
        raise HTTPError(400, "the body is not a readable PNG or JPEG image") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise too_large
    with room_for(width * height) if room_for else contextlib.nullcontext():
        try:
            gray, alpha = read_image(io.BytesIO(body))
        except ValueError:
            raise HTTPError(400, "the body is not a readable PNG or JPEG image") from None
        with np.errstate(all="ignore"):    # this thread only: a 0/0 in an odd image is no log line
            x, p, steps = predict_number(gray, alpha, Ws, bs, activation, dataset, typical)
    if x is None:
        return {"digit": None, "reason": steps.get("reason", "nothing like a digit")}
    return {"digit": int(p.argmax()),
            "probabilities": [round(float(v), 6) for v in p],
            "input28": [[round(float(v), 3) for v in row] for row in x],  # 3 decimals: ~4 kB of JSON
            **(digits_answer(steps) if dataset == "mnist" else {})}


def health_answer(meta):
    """The answer of GET /health: what model is being served."""
    return {"status": "ok", "sizes": meta["sizes"], "activation": meta["activation"],
            "test_accuracy": meta.get("test_accuracy")}


def is_loopback_name(name):
    """True for a name or address that always means this machine: localhost, *.localhost
    (RFC 6761), 127.x.x.x, ::1."""
    import ipaddress
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_of(header):
    """The name in a Host header, without its port: 'a:8000' -> 'a', '[::1]:8000' -> '::1'."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class DeadlineReader(io.RawIOBase):
    """A connection's incoming bytes, each wait limited to the time left until `deadline`
    (time.monotonic()): the deadline holds for the whole request, not for each read. It is
    set by the request's first bytes (None until then: waiting for a request, on a kept-alive
    connection, is limited to request_seconds on its own)."""

    def __init__(self, connection, request_seconds):
        self.connection, self.request_seconds, self.deadline = connection, request_seconds, None

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.request_seconds if self.deadline is None else self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the request was not sent in time")
        self.connection.settimeout(left)
        count = self.connection.recv_into(buffer)
        if self.deadline is None:
            self.deadline = time.monotonic() + self.request_seconds
        return count


class DecodingTurns:
    """Whose turn it is to decode an image, shared by the server's threads.

    Images are prepared at most one per CPU core at a time: more at once would not finish
    sooner, they would only hold more decoded pixels in memory together. Large images (photos)
    leave one core to the drawings, so that a drawing never waits for two photos; and whatever
    the number of cores, no more than PIXELS_DECODED_AT_ONCE pixels are decoded at a time.
    """

    def __init__(self, cores):
        self.one_per_core = threading.BoundedSemaphore(cores)
        self.large_ones = threading.BoundedSemaphore(max(1, cores - 1))
        self.pixels_decoding, self.room_changed = 0, threading.Condition()

    @contextlib.contextmanager
    def room_for(self, pixels):
        """Wait for the turn of an image of this many pixels: memory, then a core."""
        pixels = min(pixels, PIXELS_DECODED_AT_ONCE)
        with self.large_ones if pixels > LARGE_IMAGE_PIXELS else contextlib.nullcontext():
            with self.room_changed:
                self.room_changed.wait_for(
                    lambda: self.pixels_decoding + pixels <= PIXELS_DECODED_AT_ONCE)
                self.pixels_decoding += pixels
            try:
                with self.one_per_core:
                    yield
            finally:
                with self.room_changed:
                    self.pixels_decoding -= pixels
                    self.room_changed.notify_all()


# The pages the server has, and the methods each one answers.
SERVE_ROUTES = {"/": ("GET", "HEAD"), "/health": ("GET", "HEAD"), "/predict": ("POST",)}
# The page may run its own inline script and talk to this server, and nothing else: no file,
# font or script from anywhere else is ever loaded.
SERVE_PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                     "img-src data: blob:; connect-src 'self'")


class DigitRequestHandler(BaseHTTPRequestHandler):
    """One connection's requests, answered in a thread of its own. What the requests share (the
    model, the page, the limits, the log) is the server's, reached as self.server (DigitServer)."""

    protocol_version = "HTTP/1.1"             # keep-alive: a drawing asks many times in a row
    server_version = "mnist_from_scratch"

    def setup(self):
        super().setup()
        self.rfile.close()                    # the socket's own reader, replaced by one with a deadline
        self.reader = DeadlineReader(self.connection, self.server.request_seconds)
        self.rfile = io.BufferedReader(self.reader)

    def version_string(self):                 # the Server header: no Python version in it
        return self.server_version

    def log_message(self, format, *args):     # one line per request, to the server's log
        self.server.write_log(f"{self.address_string()} [{self.log_date_time_string()}] {format % args}")

    def handle_expect_100(self):
        return True            # "100 Continue" is sent only once the request is accepted

    def handle_one_request(self):
        """One request: request_seconds to wait for it, and request_seconds from its first byte
        to the end of its body."""
        seconds = self.server.request_seconds
        self.reader.deadline = None           # set by the request's first bytes
        self.command, self.requestline, self.request_version = None, "", "HTTP/1.1"
        self.body_read = False
        self.server.note(self.connection, waiting=True)
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:      # the client closed the connection
                self.close_connection = True
                return
            if self.reader.deadline is None:  # the request line came with the one before
                self.reader.deadline = time.monotonic() + seconds
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.parse_request():      # refused (400, 431, 505): already answered
                return
            self.server.note(self.connection, waiting=False)
            self.route()
            self.wfile.flush()
        except socket.timeout:
            self.send_error(408, f"the request was not sent within {seconds:g} seconds")
        except OSError as error:              # the client hung up
            self.close_connection = True
            self.log_error("connection lost on %s: %s", self.requestline or "a request", error)

    def answer(self, status, body, content_type="application/json", headers=()):
        self.connection.settimeout(self.server.request_seconds)   # for sending: the reader set less
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:             # a body left unread must not be taken for the next request
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def answer_json(self, status, value, headers=()):
        self.answer(status, json.dumps(value).encode("utf-8"), headers=headers)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, headers too long) as JSON too."""
        self.close_connection = True
        try:
            self.answer_json(code, {"error": message or self.responses.get(code, ("error",))[0]})
        except OSError:
            pass                              # the client has gone: nothing to tell it

    def route(self):
        """Answer one request; a refusal is a JSON error, a bug one log line and a 500."""
        path = self.path.split("?", 1)[0]
        try:
            self.check_request(path)
            if path == "/":
                self.answer(200, self.server.page, "text/html; charset=utf-8",
                            headers=[("Content-Security-Policy", SERVE_PAGE_POLICY)])
            elif path == "/health":
                self.answer(200, self.server.health)
            else:
                self.answer_json(200, self.server.predict(self.read_image_body()))
        except HTTPError as refusal:
            self.close_connection = True          # a refused request's body may be left unread
            allow = [("Allow", ", ".join(SERVE_ROUTES[path]))] if refusal.status == 405 else []
            self.answer_json(refusal.status, {"error": str(refusal)}, headers=allow)
            self.drop_unread_body()
        except socket.timeout:                    # the body stalled
            self.send_error(408, f"the request was not sent within "
                                 f"{self.server.request_seconds:g} seconds")
        except OSError as error:                  # the client hung up
            self.close_connection = True
            self.log_error("connection lost on %s %s: %s", self.command, path, error)
        except Exception as error:                # a bug: one log line here, no traceback there
            self.close_connection = True
            self.log_error("internal error on %s %s: %s: %s", self.command, path,
                           type(error).__name__, error)
            try:
                self.answer_json(500, {"error": "internal error; the server's log says more"})
            except OSError:
                pass

    def check_request(self, path):
        """HTTPError unless the request is for this server, a page it has, by a method it takes."""
        asked_for = self.headers.get("Host")
        if asked_for is not None and not self.server.answers_for(host_of(asked_for)):
            raise HTTPError(400, f"this server answers for this machine only (localhost, "
                                 f"127.0.0.1), not for Host {asked_for}; behind a proxy, "
                                 f"start it with --allow-host {host_of(asked_for)}")
        if path not in SERVE_ROUTES:
            raise HTTPError(404, f"no such page: {path}; there are / (the page), "
                                 f"/health and POST /predict")
        if self.command not in SERVE_ROUTES[path]:
            raise HTTPError(405, f"{path} answers {' and '.join(SERVE_ROUTES[path])}, "
                                 f"not {self.command}")

    def declared_length(self):
        """The body's size from Content-Length: ASCII digits only (int() would take '²' or
        ' 1_0'), one value; None when there is none, HTTPError(400) when it is not a size."""
        values = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if not values:
            return None
        length = values.pop()
        if values or not (length.isascii() and length.isdigit()):
            raise HTTPError(400, "the Content-Length header must be one size in bytes (digits 0-9)")
        return int(length)

    def read_image_body(self):
        """The request's PNG or JPEG bytes, checked before and after reading them."""
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in IMAGE_TYPES:
            raise HTTPError(415, f"send a PNG or JPEG image (Content-Type image/png or "
                                 f"image/jpeg), not {content_type or 'no Content-Type'}")
        length = self.declared_length()
        if length is None or "Transfer-Encoding" in self.headers:
            raise HTTPError(411, "the request needs a Content-Length header with the body's size "
                                 "in bytes (and no Transfer-Encoding)")
        if length > MAX_BODY_BYTES:                # refused unread: the limit protects memory
            raise HTTPError(413, f"the body has {length} bytes; the limit is "
                                 f"{MAX_BODY_BYTES // (1024 * 1024)} MB: send a smaller image")
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)           # accepted: now the client may send the body
            self.end_headers()
        body = self.rfile.read(length)
        self.body_read = True
        if len(body) < length:
            raise HTTPError(400, f"the body ended after {len(body)} of {length} bytes")
        if not body:
            raise HTTPError(400, "the body is empty: send the image's bytes")
        if not body.startswith(IMAGE_TYPES[content_type]):
            raise HTTPError(400, f"the body is not a {content_type[6:].upper()} image "
                                 f"(its first bytes are wrong)")
        return body

    def drop_unread_body(self):
        """After a refusal: say that nothing more will be sent, then read and drop the body the
        client may still be sending (up to MAX_DISCARDED_BYTES, within the request's time).
        Closing with unread bytes would reset the connection, and a client still sending
        (Python's urllib) would never read the answer."""
        try:
            length = 0 if self.body_read else (self.declared_length() or 0)
        except HTTPError:
            length = MAX_DISCARDED_BYTES
        if length == 0 or "Expect" in self.headers:   # no body, or none until invited
            return
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            left = min(length, MAX_DISCARDED_BYTES)
            while left > 0:
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:                           # a timeout, or the client has gone
            pass

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = route


class DigitServer(ThreadingHTTPServer):
    """What every request shares: the model (read-only), the page, the limits and the log; and
    at most max_connections connections handled at once (process_request). See make_server."""

    daemon_threads = True                     # Ctrl+C does not wait for open connections
    request_queue_size = 64                   # connections waiting to be accepted (default 5)

    def __init__(self, Ws, bs, meta, host, port, log, allowed_hosts, request_seconds,
                 max_connections):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.Ws, self.bs, self.meta = Ws, bs, meta
        self.page = SERVE_PAGE.encode("utf-8")
        self.health = json.dumps(health_answer(meta)).encode("utf-8")
        # On a loopback address only requests for this machine are answered: a web page elsewhere
        # could otherwise reach the server through a name of its own that resolves to 127.0.0.1
        # (DNS rebinding). Browsers always send the Host they asked for.
        self.check_host = is_loopback_name(host)
        self.allowed_hosts = {name.lower().rstrip(".") for name in allowed_hosts}
        self.request_seconds, self.max_connections = request_seconds, max_connections
        self.turns = DecodingTurns(os.cpu_count() or 1)
        self.log, self.log_lock = log, threading.Lock()
        self.handling = {}    # connection -> when it began waiting for a request, None while answering
        self.handling_lock = threading.Lock()
        super().__init__((host, port), DigitRequestHandler)

    def predict(self, body):
        """The answer of POST /predict for these bytes (predict_image_bytes), in its turn."""
        return predict_image_bytes(body, self.Ws, self.bs, self.meta["activation"],
                                   self.meta.get("dataset", "mnist"), self.turns.room_for,
                                   self.meta.get("typical_logit"))

    def answers_for(self, name):
        """True for a Host this server answers: any on an open address; on a loopback one, this
        machine's names and those of --allow-host."""
        return (not self.check_host or is_loopback_name(name)
                or name.lower().rstrip(".") in self.allowed_hosts)

    def write_log(self, line):
        """One whole line at a time, whatever the other threads write (to log, else stderr)."""
        with self.log_lock:
            stream = self.log or sys.stderr
            stream.write(line.translate(LOG_ESCAPES) + "\n")
            stream.flush()

    def note(self, connection, waiting):
        with self.handling_lock:
            if connection in self.handling:
                self.handling[connection] = time.monotonic() if waiting else None

    def process_request(self, request, client_address):
        """A thread for the new connection; at max_connections, the connection that has waited
        longest for a request to arrive (idle, or sending its headers byte by byte) is closed
        to make room, and when every connection is being answered, 503 at once."""
        with self.handling_lock:
            waiting = [(since, connection) for connection, since in self.handling.items()
                       if since is not None]
            full = len(self.handling) >= self.max_connections
            if full and waiting:
                _, oldest = min(waiting, key=lambda pair: pair[0])
                del self.handling[oldest]
                try:
                    oldest.shutdown(socket.SHUT_RDWR)    # its thread ends at once
                except OSError:
                    pass
            if not full or waiting:
                self.handling[request] = time.monotonic()
        if full and not waiting:
            self.refuse_busy(request, client_address)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.handling_lock:
                self.handling.pop(request, None)

    def refuse_busy(self, request, client_address):
        body = json.dumps({"error": f"the server is answering {self.max_connections} requests; "
                                    f"try again in a moment"}).encode("utf-8")
        try:
            request.settimeout(1)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
                            % (len(body), body))
        except OSError:
            pass
        self.write_log(f"{client_address[0]}: 503, {self.max_connections} connections being answered")
        self.shutdown_request(request)

    def handle_error(self, request, client_address):   # one line, never a traceback
        error = sys.exc_info()[1]
        self.write_log(f"{client_address[0]}: connection error: {type(error).__name__}: {error}")


def make_server(Ws, bs, meta, host, port, log=None, allowed_hosts=(),
                request_seconds=SECONDS_TO_SEND_A_REQUEST, max_connections=MAX_CONNECTIONS):
    """A DigitServer answering GET /, GET /health and POST /predict with this model.

    Call .serve_forever() to run it, .shutdown() from another thread to stop it, .server_close()
    to free the port. port 0 picks a free port (read it from server.server_address). log: where
    the one line per request goes (default: sys.stderr). allowed_hosts: names besides this
    machine's that a server on a loopback address answers for (a proxy's). request_seconds:
    the time a client has to send a whole request; max_connections: connections handled at
    once. Raises OSError when the address cannot be used (port in use, unknown host).
    """
    Ws, bs = [np.array(W) for W in Ws], [np.array(b) for b in bs]   # the server's own copies ...
    for array in (*Ws, *bs):
        array.setflags(write=False)    # ... shared by every thread: an attempt to change them fails loudly
    return DigitServer(Ws, bs, meta, host, port, log, allowed_hosts, request_seconds,
                       max_connections)


def run_server(server, host):
    """Print where to open the page, serve until Ctrl+C, then free the port."""
    port = server.server_address[1]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"    # IPv6 addresses in brackets
    try:  # Ctrl+C as soon as the address is printed stops the server quietly too
        if is_loopback_name(host):
            print(f"serving on http://{address}/  (this machine only; Ctrl+C stops)", flush=True)
        else:
            print(f"warning: listening on {address}: anyone who can reach this machine can use "
                  f"the server (no password, no encryption)", file=sys.stderr, flush=True)
            print(f"serving on http://{address}/  (from this machine: http://localhost:{port}/; "
                  f"Ctrl+C stops)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()


def add_serve_command(add, shared):
    """`serve` and its options (add and shared: see build_parser)."""
    p = add("serve", "serve a page to draw on in a web browser, and the network as a JSON API "
                     "(POST /predict), over HTTP")
    p.add_argument("--model", metavar="FILE", help=f"model file (default: {MODEL_PATH})")
    p.add_argument("--host", default=SERVE_HOST,
                   help=f"address to listen on (default: {SERVE_HOST}, this machine only; "
                        f"0.0.0.0: every network the machine is on)")
    p.add_argument("--port", default=SERVE_PORT,
                   type=checked_number(int, lambda v: 0 <= v <= 65535, "from 0 to 65535"),
                   help=f"port to listen on (default: {SERVE_PORT}; 0: any free port)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this host name when listening on this machine "
                        "only (a proxy in front, such as jupyter-server-proxy, may pass its own); "
                        "can be given more than once")
    p.set_defaults(run=command_serve, paths={"model": "model to read"})


def command_serve(args):
    import warnings
    if not args.host.strip():
        raise UserError("--host '': give the address to listen on: 127.0.0.1 (this machine only, "
                        "the default) or 0.0.0.0 (every network the machine is on)")
    Ws, bs, meta = load_model(args.model)      # once, before the first request
    # NumPy's warnings about an odd image (a mean of nothing) would be lines in the log that
    # no request asked for; the answer itself is checked.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")
    try:
        server = make_server(Ws, bs, meta, args.host, args.port, allowed_hosts=args.allow_host)
    except OSError as error:
        import errno
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"port {args.port} is already in use (another server?): choose "
                            f"another with --port") from None
        raise UserError(f"cannot listen on {args.host} port {args.port}: "
                        f"{error.strerror or error}; check --host and --port") from None
    run_server(server, args.host)
    return 0


# %% [15] The lesson as a Jupyter notebook
#
# `python mnist_from_scratch.py notebook` writes the lesson, sections [0] to [10] of this very
# file, as a Jupyter notebook (Jupyter, JupyterLab, VS Code, Google Colab); `notebook
# --exercises` writes the same notebook as an assignment. Both are made from the cells above,
# so a change to the lesson changes them too:
#   * each cell's comment introduction becomes text (markdown): its lists become lists, and
#     its formulas LaTeX where LESSON_LATEX (a formula on a line of its own) or
#     LESSON_INLINE_LATEX (one inside a sentence) know them, code blocks where not;
#   * its code is cut, with Python's own parser (ast), into one code cell per function or
#     group of statements (an activation shares its cell with its derivative), and a comment
#     between them becomes text; a function longer than a screen gives its docstring to the
#     text above it, and is folded if it is still too long; where three code cells would
#     follow each other, a sentence naming the next one (from its docstring) comes between;
#   * its "Try it" block becomes a caption and a code cell that runs what the section built;
#     a training that prints each epoch (on_epoch=show) also redraws its curves there, in
#     place, as each epoch ends;
#   * section [0] keeps only the imports and definitions the rest of the lesson uses.
# What only a notebook needs comes from here: the title; one folded first code cell with what
# the lesson does not teach (get_mnist, which fetches MNIST into a `data` folder beside the
# notebook, the picture functions of section [12], and the checks of the exercises); a
# one-line data cell; a picture, with what to look at in it, where a student would rather
# look than read; questions; and an ending whose experiments each run as written. In the
# exercises the student writes the bodies of the functions in EXERCISES, from the equations,
# shapes and names its stub gives; after each one a check cell runs the check_* function
# below on it, and says "correct", "wrong" (what was expected, what came out, and a hint for
# the usual mistakes) or "unfinished". A lesson function from which an answer follows by a
# small change (FOLDED_UNTIL) is folded until its exercise passes. The checks are ordinary
# functions of this file, copied into the notebook, so they can be read and tested here.
# A notebook is a JSON file (the nbformat 4 layout), so the standard library's json writes it.

LESSON_SECTIONS = range(0, 11)  # the lesson: sections [0] to [10]
CELL_LINES = 40   # a code cell that fits on one screen; longer ones give their docstring to the text
FOLD_LINES = 50   # a function still longer than this is folded: run, and read in the file
SHOWN_WHOLE = range(0, 10)  # sections whose code is never folded: the plain network, all in view

# The lesson's indented formulas in LaTeX, by their ASCII form (the formula, or the whole line);
# a formula not listed here stays a code block in the notebook, as it is written above.
LESSON_LATEX = {
    "Z = A_prev W + b": r"Z = A_{prev}\,W + b",
    "A = f(Z)": r"A = f(Z)",
    "dZ_L = (P - Y) / m": r"dZ_L = \frac{\partial L}{\partial Z_L} = \frac{1}{m}\,(P - Y)",
    "dW = A_prev^T dZ": r"dW = \frac{\partial L}{\partial W} = A_{prev}^{\top}\, dZ",
    "db = sum of dZ over the batch": r"db = \frac{\partial L}{\partial b} = \sum_{i=1}^{m} dZ_{i,:}",
    "dA_prev = dZ W^T": r"dA_{prev} = dZ\, W^{\top}",
    "dZ_prev = dA_prev * f'(A_prev)": r"dZ_{prev} = dA_{prev} \odot f'(A_{prev})",
    "dL/dθ ≈ (L(θ + ε) - L(θ - ε)) / (2 ε)":
        r"\frac{\partial L}{\partial \theta} \approx \frac{L(\theta + \varepsilon) - L(\theta - \varepsilon)}{2\,\varepsilon}",
    "g = dW + λ W": r"g = dW + \lambda W",
    "v = μ v + g": r"v = \mu v + g",
    "W = W - η v": r"W = W - \eta v",
    "q = A (p - c) + c + t, A = R(theta) @ H(h) @ S(s_row, s_col) (2x2)":
        r"q = A\,(p - c) + c + t, \qquad A = R(\theta)\, H(h)\, S(s_{row}, s_{col}) \quad (2 \times 2)",
    "p = A^-1 (q - c - t) + c": r"p = A^{-1}\,(q - c - t) + c",
    "A = f(Z) * mask": r"A = f(Z) \odot \mathrm{mask}",
    "q = A (p - c) + c + t": r"q = A\,(p - c) + c + t",
    "q = p + d(p)": r"q = p + d(p)",
    "(X - mean) W1 + b1 = X W1 + (b1 - mean W1)":
        r"(X - \mathrm{mean})\,W_1 + b_1 = X\,W_1 + (b_1 - \mathrm{mean}\,W_1)",
    "η_t = η (1 + cos(π t / T)) / 2": r"\eta_t = \eta\,\frac{1 + \cos(\pi t / T)}{2}",
    "top = I[r0, c0] + fc (I[r0, c0 + 1] - I[r0, c0])":
        r"\mathrm{top} = I_{r_0, c_0} + f_c\,(I_{r_0, c_0 + 1} - I_{r_0, c_0})",
    "bottom = I[r0 + 1, c0] + fc (I[r0 + 1, c0 + 1] - I[r0 + 1, c0])":
        r"\mathrm{bottom} = I_{r_0 + 1, c_0} + f_c\,(I_{r_0 + 1, c_0 + 1} - I_{r_0 + 1, c_0})",
    "value = top + fr (bottom - top)":
        r"\mathrm{value} = \mathrm{top} + f_r\,(\mathrm{bottom} - \mathrm{top})",
}


# Formulas inside the lesson's sentences, in LaTeX, by their ASCII form (a line break may fall
# anywhere a space is).
LESSON_INLINE_LATEX = {
    "W ~ Normal(0, std = sqrt(2 / n_in))": r"W \sim \mathcal{N}\big(0, \sigma = \sqrt{2 / n_{in}}\big)",
    "Var(Z) = n_in * Var(W) * E[A_prev^2]":
        r"\mathrm{Var}(Z) = n_{in}\, \mathrm{Var}(W)\, \mathbb{E}[A_{prev}^2]",
    "E[A^2]": r"\mathbb{E}[A^2]",
    "std = sqrt(2 / (n_in + n_out))": r"\sigma = \sqrt{2 / (n_{in} + n_{out})}",
    "L = -(1/m) sum_i log P[i, y_i]": r"L = -\frac{1}{m} \sum_i \log P_{i, y_i}",
    "P = softmax(Z)": r"P = \mathrm{softmax}(Z)",
    "log P[i, k] = Z[i, k] - log sum_j e^Z[i, j]": r"\log P_{i,k} = Z_{i,k} - \log \sum_j e^{Z_{i,j}}",
    "max + log sum e^(Z - max)": r"\max + \log \sum e^{Z - \max}",
    "log(0)": r"\log 0",
    "A_0 = X": r"A_0 = X",
    "dW = (1/m) A^T (P - Y)": r"dW = \frac{1}{m} A^{\top} (P - Y)",
    "|analytic - numeric| / (|analytic| + |numeric|)":
        r"\frac{\lVert g_{analytic} - g_{numeric} \rVert}{\lVert g_{analytic} \rVert + \lVert g_{numeric} \rVert}",
    "(f' <= 1/4)": r"(f' \le 1/4)",
    "-log(1/10) = 2.30": r"-\log(1/10) = 2.30",
    "A = f(Z) * mask": r"A = f(Z) \odot \mathrm{mask}",
    "dW = A_prev^T dZ": r"dW = A_{prev}^{\top} dZ",
    "r0 = floor(row), c0 = floor(col)": r"r_0 = \lfloor row \rfloor,\ c_0 = \lfloor col \rfloor",
    "fr = row - r0, fc = col - c0 in [0, 1)": r"f_r = row - r_0,\ f_c = col - c_0 \in [0, 1)",
    "(1-fr)(1-fc), (1-fr)fc, fr(1-fc), fr fc": r"(1-f_r)(1-f_c),\ (1-f_r) f_c,\ f_r (1-f_c),\ f_r f_c",
}


def inline_latex(markdown):
    """markdown with the formulas of LESSON_INLINE_LATEX in its sentences as $...$; code
    (```...```, `...`) and display equations ($$...$$) stay as they are."""
    import re
    pieces = re.split(r"(```.*?```|`[^`\n]*`|\$\$.*?\$\$)", markdown, flags=re.S)
    for i in range(0, len(pieces), 2):  # the even pieces are text
        for ascii_form, latex in LESSON_INLINE_LATEX.items():
            pattern = r"\s+".join(map(re.escape, ascii_form.split(" ")))
            pieces[i] = re.sub(pattern, lambda _: "$" + latex + "$", pieces[i])
    return "".join(pieces)


def split_into_cells(source):
    """The `# %% [n] Title` cells of a source file: a list of (n, title, text); n is a number,
    or a string for a part that follows a section ('11b')."""
    cells = []
    for chunk in source.split("\n# %% [")[1:]:
        header, _, text = chunk.partition("\n")
        number, _, title = header.partition("] ")
        cells.append((int(number) if number.isdigit() else number, title.strip(), text))
    return cells


def latex_equation(line):
    """An indented formula line, "formula    shapes or words", as a LaTeX display equation, or
    None when LESSON_LATEX does not know the formula."""
    import re
    whole = " ".join(line.split())
    if whole in LESSON_LATEX:  # a line written out whole, shapes and all
        return "$$" + LESSON_LATEX[whole] + "$$"
    formula, *notes = re.split(r"\s{2,}", line.strip())
    if formula not in LESSON_LATEX:
        return None
    parts = [LESSON_LATEX[formula]]
    for note in notes:
        if not re.sub(r"n_in|n_out|m|\d+|[\s(),@+]|->", "", note):  # shapes: (m, n_in) @ ...
            parts.append(re.sub(r"n_(in|out)", r"n_{\1}", note).replace("@", r"\cdot")
                         .replace("->", r"\to"))
        else:
            parts.append(r"\text{" + note.replace("_", r"\_").replace("%", r"\%")
                         .replace("~", "∼") + "}")
    return "$$" + r" \qquad ".join(parts) + "$$"


def text_to_markdown(lines):
    """Plain text lines (a comment's or a docstring's) -> markdown: paragraphs stay text,
    indented "1." / "*" lines become lists, indented formulas LaTeX (see latex_equation),
    and other indented or column-aligned lines code blocks, so their alignment survives."""
    import re
    markdown, in_code, in_list = [], False, False
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        item = re.match(r"\d+\.\s" if indent < 2 else r"(\d+\.|\*|-)\s", stripped)
        equation = latex_equation(line) if indent >= 4 else None
        preformatted = not item and not equation and not (in_list and indent >= 4) and (
            indent >= 4 or (indent >= 2 and "  " in stripped))
        if in_code and not preformatted:
            markdown.append("```")
            in_code = False
        if not stripped:
            in_list = False
            markdown.append("")
        elif item:
            markdown.append(("" if in_list else "\n") + stripped)
            in_list = True
        elif in_list and equation:
            markdown.append("\n   " + equation + "\n")  # inside the item
        elif in_list and indent >= 2:
            markdown.append("   " + stripped)  # the item goes on
        elif equation:
            markdown.append("\n" + equation + "\n")
        elif preformatted:
            if not in_code:
                markdown.append("```")
                in_code = True
            markdown.append(line[2:])
        else:
            in_list = False
            markdown.append(stripped)
    if in_code:
        markdown.append("```")
    return inline_latex(re.sub(r"\n{3,}", "\n\n", "\n".join(markdown)).strip())


def comment_to_markdown(lines):
    """Comment lines ('# text') -> markdown (see text_to_markdown)."""
    return text_to_markdown([line[2:] if line.startswith("# ") else line[1:] for line in lines])


def split_cell(text):
    """One cell's text -> (its leading comment lines, the rest)."""
    lines = text.strip("\n").split("\n")
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    return lines[:n], "\n".join(lines[n:])


def comment_pieces(lines):
    """Comment lines between statements -> pieces: ("markdown", text) for a comment, and
    ("try", caption) + ("code", its code) for a "# Try it" block."""
    pieces, block = [], []
    for line in lines + [""]:
        if line.startswith("#"):
            block.append(line)
            continue
        if block and block[0].startswith("# Try it"):
            code = [line[6:] for line in block if line.startswith("#     ")]
            caption = [line for line in block if not line.startswith("#     ")]
            caption = " ".join(line[2:] for line in caption)[len("Try it"):].lstrip(":").strip()
            pieces += [("try", caption), ("code", "\n".join(code))]
        elif block:
            pieces.append(("markdown", comment_to_markdown(block)))
        block = []
    return pieces


def code_pieces(code):
    """A cell's code -> pieces in order: ("code", source, name) for each top-level function
    or class and for each run of other statements (name None), and the comment pieces between
    them (see comment_pieces)."""
    import ast
    lines = code.split("\n")
    pieces, run, cursor = [], [], 0

    def end_run():
        if run:
            pieces.append(("code", "\n".join(run).strip("\n"), None))
            run.clear()

    for node in ast.parse(code).body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        between = comment_pieces(lines[cursor:start])
        if between:
            end_run()
            pieces += between
        statement = "\n".join(lines[start:node.end_lineno])
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            end_run()
            pieces.append(("code", statement, node.name))
        else:
            run.append(statement)
        cursor = node.end_lineno
    end_run()
    return pieces + comment_pieces(lines[cursor:])


def docstring_aside(source, keep_lines, note=" (more in the text above)"):
    """A function's source whose docstring is cut to its first paragraph, ending in `note`
    (when the function is longer than keep_lines), and the markdown of the whole docstring;
    or (source, None)."""
    import ast
    lines = source.split("\n")
    node = ast.parse(source).body[0]
    doc = ast.get_docstring(node) if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else None
    if len(lines) <= keep_lines or not doc:
        return source, None
    first = doc.split("\n\n")[0].split("\n")
    indent = " " * node.body[0].col_offset
    short = [indent + '"""' + first[0]] + [indent + line for line in first[1:]]
    short[-1] += note + '"""'
    kept = lines[:node.body[0].lineno - 1] + short + lines[node.body[0].end_lineno:]
    return "\n".join(kept), f"**`{node.name}`**: " + text_to_markdown(doc.split("\n"))


def exercise_stub(source, number):
    """A function's source with its body replaced by "your code here": the signature, the
    docstring and the equations with their shapes (EXERCISES) stay."""
    import ast
    node = ast.parse(source).body[0]
    lines = source.split("\n")
    indent = " " * node.body[0].col_offset
    hints = [indent + "# " + line for line in EXERCISES[node.name].split("\n")]
    return "\n".join(lines[:node.body[0].end_lineno] + hints + [
        indent + "# your code here",
        indent + f'raise NotImplementedError("exercise {number}: write the body of {node.name}")'])


# What the student writes in `notebook --exercises`, in the lesson's order, each with the
# equations, the shapes and the names of its arrays, which stand in its cell for the body: what
# to compute, not how to write it.
EXERCISES = {
    "he_init": "W ~ Normal(0, std = sqrt(2 / n_in)), shape (n_in, n_out), drawn with rng",
    "relu": "A = max(0, Z), entry by entry: Z (m, n) -> A (m, n)",
    "relu_derivative": "dA/dZ = 1 where the unit is on (A > 0), 0 where it is off: A (m, n) -> (m, n)",
    "softmax": "P[i, k] = e^Z[i, k] / sum_j e^Z[i, j], row by row: Z (m, 10) -> P (m, 10)\n"
               "it must also work for scores like 1000, whose e^1000 overflows",
    "forward": "A_0 = X;  Z = A_prev W + b   (m, n_in) @ (n_in, n_out) + (n_out,) -> (m, n_out)\n"
               "A = f(Z) for every layer but the last, whose Z are the logits Z_L\n"
               "f: the first of the pair ACTIVATIONS[activation]; returns As = [X, A_1, ..., Z_L]",
    "cross_entropy": "L = -(1/m) sum_i log P[i, y_i]: Z (m, 10), y (m,) -> one number\n"
                     "log P = log_softmax(Z), which never takes log(0)",
    "backward": "the equations are those of the text above: dZ_L first, then dW, db, dA_prev and\n"
                "dZ_prev for each layer from the last down; f': the second of ACTIVATIONS[activation]\n"
                "As = [X, A_1, ..., Z_L] (forward's list), y (m,), Ws -> dWs, dbs shaped like Ws, bs",
    "sgd_step": "g = grad + weight_decay * param;  v = momentum * v + g;  param = param - lr * v\n"
                "for every (param, grad, v) of the lists, changing the arrays themselves: the\n"
                "lists hold the same arrays afterwards",
}

# Lesson functions from which an exercise's answer follows by a small change: in the exercises
# they are folded until that exercise passes.
FOLDED_UNTIL = {"xavier_init": "he_init", "log_softmax": "softmax",
                "forward_with_dropout": "forward", "backward_with_dropout": "backward"}


# The checks. Each check_NAME(NAME, ...) runs the student's function on fixed small inputs
# whose answers are written here as numbers (they do not show how to compute them), and prints
# one verdict: "✓ ... correct", "✗ ... wrong" or "… unfinished".

class ExerciseWrong(Exception):
    """What a check found: the message says what was expected, what came out, and a hint."""


def run_check(name, test):
    """Run test(), the check of exercise `name`, and print its verdict; True when it passed.
    Needs: EXERCISES (the order), FOLDED_UNTIL, ExerciseWrong."""
    import traceback
    names = list(EXERCISES)
    number = names.index(name) + 1
    after = (f"Next: exercise {number + 1}, {names[number]}." if number < len(names)
             else "That was the last exercise: run the rest of the notebook to train your network.")
    unfolded = [f for f, until in FOLDED_UNTIL.items() if until == name]
    if unfolded:
        after += f" You may now unfold {unfolded[0]}, below, and compare."
    try:
        with np.errstate(all="ignore"):  # overflows show up in the answer, not as warnings
            test()
    except NotImplementedError as e:
        where = traceback.extract_tb(e.__traceback__)[-1].name
        if where == name:
            print(f"… exercise {number}, {name}: unfinished. Write the body of {name} in the "
                  f"cell above (instead of its `raise` line), run it, then run this check again.")
        else:
            print(f"… exercise {number}, {name}: cannot be checked yet: it calls {where}, which "
                  f"is unfinished. Finish {where} first (if you have, run again the cells from "
                  f"{where}'s down to here: they still hold the unfinished one).")
        return False
    except ExerciseWrong as e:
        print(f"✗ exercise {number}, {name}: wrong. {e}")
        return False
    except Exception as e:
        hint = (" Hint: a shape error often means a transpose, or a sum over the wrong axis; "
                "print the .shape of each array." if "shape" in str(e) or "broadcast" in str(e)
                or "mismatch" in str(e) else
                " Hint: Python's max, min, `if` and `and` look at one number at a time; on a "
                "whole array use NumPy's, which work entry by entry: np.maximum(Z, 0), not "
                "max(0, Z)." if "truth value" in str(e) else "")
        print(f"✗ exercise {number}, {name}: wrong: it raised {type(e).__name__}: {e}.{hint}")
        return False
    print(f"✓ exercise {number}, {name}: correct. {after}")
    return True


def expect(what, expected, got, hint=""):
    """Raise ExerciseWrong unless got has expected's shape and values (to 4 decimals)."""
    expected = np.asarray(expected, dtype=float)
    if got is None:
        raise ExerciseWrong(f"{what} returned None: is the `return` missing?")
    got = np.asarray(got, dtype=float)
    if got.shape != expected.shape:
        raise ExerciseWrong(f"{what}: expected shape {expected.shape}, got {got.shape}. {hint}")
    if not np.allclose(got, expected, atol=1e-4):
        raise ExerciseWrong(f"{what}: expected {np.round(expected, 4).tolist()}, got "
                            f"{np.round(got, 4).tolist()}. {hint}")


def check_he_init(he_init):
    """Exercise he_init: the shape, the spread sqrt(2 / n_in), and the rng it is given."""
    def test():
        W = he_init(500, 200, np.random.default_rng(0))
        expect("he_init(500, 200, rng).shape", (500, 200), np.shape(W),
               "Hint: a transpose: one row per input, one column per unit, (n_in, n_out).")
        std, wanted = float(np.std(W)), np.sqrt(2 / 500)
        if not abs(std - wanted) < 0.05 * wanted:
            hint = {0.1: "sqrt(2 / n_out) uses the outputs; the rule counts the inputs, n_in.",
                    0.004: "2 / n_in is the variance; the standard deviation is its square root."}
            said = min(hint, key=lambda s: abs(std - s))
            raise ExerciseWrong(f"the weights' standard deviation: expected {wanted:.4f}, got "
                                f"{std:.4f}. Hint: " + (hint[said] if abs(std - said) < 0.1 * said
                                                        else "Normal(0, 1) times sqrt(2 / n_in)."))
        again = he_init(500, 200, np.random.default_rng(0))
        if not np.array_equal(W, again):
            raise ExerciseWrong("two calls with the same seed gave different weights. Hint: draw "
                                "from the rng given (rng.standard_normal), not from np.random.")
    run_check("he_init", test)


def check_relu(relu):
    """Exercise relu: known answers."""
    def test():
        Z = np.array([[-2.0, -0.5, 0.0], [0.5, 3.0, -1.0]])
        expect("relu(Z) for Z = [[-2, -0.5, 0], [0.5, 3, -1]]", [[0, 0, 0], [0.5, 3, 0]],
               relu(Z.copy()), "Hint: compare each entry with 0, keeping the shape (np.max "
               "reduces along an axis; np.maximum works entry by entry).")
    run_check("relu", test)


def check_relu_derivative(relu_derivative):
    """Exercise relu_derivative: known answers, from A = relu(Z)."""
    def test():
        A = np.array([[0.0, 0.5, 3.0], [0.0, 0.0, 2.0]])
        got = relu_derivative(A.copy())
        hint = "Hint: the slope of max(0, Z) is 1 where the unit is on (A > 0) and 0 where off."
        if got is not None and np.shape(got) == A.shape and np.allclose(np.asarray(got, float), A):
            hint = ("Hint: that is A itself, the derivative of the wrong thing: return the slope "
                    "dA/dZ (0 or 1), not the activation.")
        expect("relu_derivative(A) for A = [[0, 0.5, 3], [0, 0, 2]]", [[0, 1, 1], [0, 0, 1]], got,
               hint)
    run_check("relu_derivative", test)


def check_softmax(softmax):
    """Exercise softmax: known answers, rows summing to 1, and large scores."""
    def test():
        Z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]])
        try:
            P = softmax(Z.copy())
        except ValueError as e:  # (2, 3) / (2,) cannot be broadcast
            raise ExerciseWrong(f"softmax(Z) of a (2, 3) Z raised ValueError: {e}. Hint: a sum "
                                f"over axis=1 gives shape (2,); keepdims=True keeps it (2, 1), "
                                f"a column that divides each row by its own sum.") from None
        hint = "Hint: e^Z divided by the sum of e^Z over each row (axis=1, keepdims=True)."
        if P is not None and np.shape(P) == Z.shape and np.allclose(np.sum(P, axis=0), 1):
            hint = ("Hint: each column sums to 1: the sum is over the wrong axis. A row is one "
                    "image: sum over axis=1, with keepdims=True to divide row by row.")
        expect("softmax(Z) for Z = [[1, 2, 3], [0, 0, 4]]",
               [[0.0900, 0.2447, 0.6652], [0.0177, 0.0177, 0.9647]], P, hint)
        expect("softmax of large scores [[1000, 1001, 1002]]", [[0.0900, 0.2447, 0.6652]],
               softmax(np.array([[1000.0, 1001.0, 1002.0]])),
               "Hint: e^1000 overflows to infinity (inf / inf = nan). Subtract each row's "
               "maximum from Z first: it cancels out, and the largest power becomes e^0 = 1.")
        expect("softmax of rows of very different scale [[1000, 1001, 1002], [1, 2, 3]]",
               [[0.0900, 0.2447, 0.6652]] * 2, softmax(np.array([[1000.0, 1001, 1002], [1, 2, 3]])),
               "Hint: the second row came out wrong (e^(1 - 1002) = 0, and 0 / 0 = nan): one "
               "maximum for the whole batch is too much for some rows. Subtract each row's own "
               "maximum, Z.max(axis=1, keepdims=True).")
    run_check("softmax", test)


def check_forward(forward):
    """Exercise forward: a 3 -> 4 -> 5 network with known weights and known outputs."""
    def test():
        X = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]])
        Ws = [np.array([[0.5, -1.0, 0.25, 1.0], [-0.5, 0.5, 1.0, 0.0], [1.0, 0.0, -0.5, 0.5]]),
              np.array([[1.0, -1.0, 0.5, 0.0, 2.0], [0.5, 1.0, -1.0, 1.0, 0.0],
                        [-1.0, 0.5, 1.0, -0.5, 1.0], [0.0, 1.0, 0.0, -1.0, 0.5]])]
        bs = [np.array([0.1, 0.2, -0.3, 0.0]), np.array([0.0, -0.5, 0.5, 0.1, -0.2])]
        As = forward(X, Ws, bs)
        if not isinstance(As, (list, tuple)):
            raise ExerciseWrong(f"forward returned a {type(As).__name__}; expected the list As = "
                                f"[X, A_1, Z_2]: backward needs every layer's output.")
        if len(As) != 3:
            raise ExerciseWrong(f"expected As = [X, A_1, Z_2], 3 arrays, got {len(As)}. Hint: As "
                                f"starts with X and gets one entry per layer.")
        expect("As[1], the hidden layer's A = relu(X W1 + b1)",
               [[0.0, 0.2, 1.95, 1.0], [1.6, 0.0, 0.0, 0.5]], As[1],
               "Hint: Z = A_prev W + b, (m, n_in) @ (n_in, n_out); no transpose; then relu.")
        logits = np.array([[-1.85, 1.675, 2.25, -1.675, 2.25], [1.6, -1.6, 1.3, -0.4, 3.25]])
        expect("As[2], the logits Z_2 = A_1 W2 + b2", logits, As[2],
               "Hint: the last layer has no relu: its Z are the logits, negative ones too."
               if np.all(np.asarray(As[2]) >= 0) else "Hint: Z = A_prev W + b with the bias.")
    run_check("forward", test)


def check_cross_entropy(cross_entropy):
    """Exercise cross_entropy: a known loss, and very sure (right and wrong) scores."""
    def test():
        Z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3], [1.0, 1.0, 1.0], [0.0, 3.0, -1.0]])
        y = np.array([0, 2, 1, 1])
        L, expected = cross_entropy(Z.copy(), y), 1.0003939
        if L is not None and np.size(L) != 1:
            raise ExerciseWrong(f"expected one number, the mean loss; got an array of shape "
                                f"{np.shape(L)}. Hint: pick, in row i, log P[i, y[i]] "
                                f"(P[np.arange(m), y]), then take the mean.")
        hint = "Hint: L = -(1/m) sum over the images of log P[i, y_i]."
        if L is not None and abs(float(L) - 4 * expected) < 1e-3:
            hint = "Hint: 4 times too large: the 1/m is missing (the mean, not the sum, over m images)."
        elif L is not None and abs(float(L) + expected) < 1e-3:
            hint = "Hint: the sign: the loss is -log P, never negative."
        expect("cross_entropy(Z, y) for 4 images", expected, L, hint)
        expect("cross_entropy of very sure scores [[1000, 0, -1000]], true label 1", 1000.0,
               cross_entropy(np.array([[1000.0, 0.0, -1000.0]]), np.array([1])),
               "Hint: softmax overflowed or P rounded to 0 and log(0) = -inf: compute log P "
               "with log_softmax, which never overflows.")
    run_check("cross_entropy", test)


def finite_differences(loss_of, theta, eps=1e-6):
    """(L(θ + ε) - L(θ - ε)) / 2ε for every entry of the array theta, changed in place and
    restored: the numerical gradient of the scalar function loss_of()."""
    grad = np.zeros_like(theta)
    for i in np.ndindex(theta.shape):
        old = theta[i]
        theta[i] = old + eps
        plus = float(loss_of())
        theta[i] = old - eps
        minus = float(loss_of())
        theta[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def backward_hint(name, got, numeric, last_layer):
    """The likely mistake behind a gradient `got` of parameter `name` (e.g. "W2") that
    differs from the numerical gradient."""
    if got.shape != numeric.shape:
        return ("a transpose: dW = A_prev^T dZ, (n_in, m) @ (m, n_out)"
                if got.shape == numeric.T.shape else
                "db sums dZ over the batch, axis 0, giving (n_out,)"
                if name[0] == "b" else "dW has W's shape, (n_in, n_out)")
    ratio = float(np.sum(got * numeric) / np.sum(numeric * numeric))
    if abs(ratio - 6) < 0.1:
        return "6 times too large: the 1/m is missing (dZ_L = (P - Y) / m, m = 6)"
    if abs(ratio + 1) < 0.05:
        return "the sign is reversed: dZ_L = P - Y, not Y - P"
    if not last_layer:
        return ("the last layer is right, so the error is on the way back: dA_prev = dZ W^T, "
                "then times f'(A_prev) element by element, the derivative taken at the "
                "layer's activations A_prev (not at the gradient dA)")
    return "dZ_L = (P - Y) / m, with P = softmax(Z_L)"


def check_backward(backward, forward, cross_entropy):
    """Exercise backward: its gradients against the numerical gradient of your own forward and
    cross_entropy on a 5 -> 4 -> 3 network (so a transpose shows as a wrong shape).
    Needs: finite_differences, backward_hint."""
    def test():
        rng = np.random.default_rng(0)
        X, y = rng.random((6, 5)), np.array([0, 2, 1, 1, 0, 2])
        Ws = [rng.normal(0, 0.5, (5, 4)), rng.normal(0, 0.5, (4, 3))]
        bs = [rng.normal(0, 0.1, 4), rng.normal(0, 0.1, 3)]
        dWs, dbs = backward(forward(X, Ws, bs), y, Ws)
        for l in (1, 0):  # the last layer first: its gradient is the simpler one
            for name, param, got in ((f"W{l + 1}", Ws[l], dWs[l]), (f"b{l + 1}", bs[l], dbs[l])):
                got = np.asarray(got, dtype=float)
                numeric = finite_differences(lambda: cross_entropy(forward(X, Ws, bs)[-1], y), param)
                hint = backward_hint(name, got, numeric, last_layer=l == 1)
                if got.shape != numeric.shape:
                    raise ExerciseWrong(f"d{name}: expected shape {numeric.shape} like {name}, "
                                        f"got {got.shape}. Hint: {hint}.")
                error = np.linalg.norm(got - numeric) / (np.linalg.norm(got) + np.linalg.norm(numeric))
                if error > 1e-6:
                    raise ExerciseWrong(
                        f"d{name} differs from the numerical gradient of your forward and "
                        f"cross_entropy (relative error {error:.1e}, should be below 1e-6): "
                        f"expected {np.round(numeric, 4).ravel()[:4].tolist()} ..., got "
                        f"{np.round(got, 4).ravel()[:4].tolist()} ... Hint: {hint}.")
    run_check("backward", test)


def check_sgd_step(sgd_step):
    """Exercise sgd_step: two steps with momentum, then weight decay, on known numbers."""
    def test():
        W, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -0.5])
        dW, db = np.array([[0.5, -0.5], [1.0, 0.0]]), np.array([1.0, 2.0])
        vW, vb = np.zeros_like(W), np.zeros_like(b)
        returned = sgd_step([W, b], [dW.copy(), db.copy()], [vW, vb], 0.1, 0.9)
        if np.array_equal(W, [[1.0, 2.0], [3.0, 4.0]]):
            raise ExerciseWrong(
                "W is unchanged after the step: the update is not in place. `param = param - "
                "...` makes a new array and the list still holds the old one; change the array "
                "itself: param -= ..., v *= ... (sgd_step returns nothing"
                + (f", but it returned a {type(returned).__name__})" if returned is not None else ")"))
        if np.allclose(W, [[1.05, 1.95], [3.1, 4.0]]):
            raise ExerciseWrong("expected W = [[0.95, 2.05], [2.9, 4.0]], got "
                                f"{np.round(W, 4).tolist()}: a step in the wrong direction. "
                                "Hint: the gradient points uphill; descend: W = W - lr * v.")
        expect("W after one step (lr 0.1, momentum 0.9)", [[0.95, 2.05], [2.9, 4.0]], W,
               "Hint: v = momentum * v + grad, then W = W - lr * v.")
        expect("b after one step", [0.4, -0.7], b, "Hint: the biases are stepped like the weights.")
        if not np.any(vW):
            raise ExerciseWrong(
                "the velocity v is still 0 after a step with a gradient. Hint: v = momentum * "
                "v + g, and the step is W = W - lr * v (with no v at all it is plain SGD, not "
                "momentum); if you wrote `v = ...`, that makes a new array the list does not "
                "hold: update v in place (v *= momentum; v += g).")
        sgd_step([W, b], [dW.copy(), db.copy()], [vW, vb], 0.1, 0.9)
        expect("W after a second step with the same gradient", [[0.855, 2.145], [2.71, 4.0]], W,
               "Hint: the velocity must carry over: v = momentum * v + g, with the v of the "
               "step before.")
        W = np.array([[1.0, 2.0], [3.0, 4.0]])
        sgd_step([W], [dW.copy()], [np.zeros_like(W)], 0.1, 0.9, weight_decay=0.1)
        expect("W after one step with weight_decay 0.1", [[0.94, 2.03], [2.87, 3.96]], W,
               "Hint: weight decay adds weight_decay * W to the gradient: g = grad + λ W.")
    run_check("sgd_step", test)


def exercise_progress(namespace):
    """Run every exercise's check quietly on the functions in namespace (the notebook's
    globals()); print one line per exercise and what to do next."""
    import contextlib
    import inspect
    import io
    done = []
    for name in EXERCISES:
        check = namespace["check_" + name]
        with contextlib.redirect_stdout(io.StringIO()) as said:
            check(*[namespace[n] for n in inspect.signature(check).parameters])
        done.append(said.getvalue().startswith("✓"))
        print(said.getvalue().split(". ")[0].split(": wrong")[0].rstrip("."))
    todo = [name for name, passed in zip(EXERCISES, done) if not passed]
    print("All exercises pass: the network trained below is yours." if not todo else
          f"To do next: {todo[0]} ({len(todo)} of {len(EXERCISES)} exercises left).")


# The notebook's own cells. The pictures, questions and the ending are placed after the
# section that defines the function named first (or at the end, if none does). Each picture
# says what to look at in it.
PICTURE_TOOLS = ["PLOT_DPI", "display_available", "_new_figure", "_check_png_path",
                 "_save_figure", "write_atomically", "plot_digits", "plot_probabilities",
                 "plot_history", "plot_confusion", "worst_errors",
                 "plot_errors", "smoothness", "plot_weights"]
CHECK_TOOLS = ["ExerciseWrong", "run_check", "expect", "finite_differences", "backward_hint"]

NOTEBOOK_ADDITIONS = [
    ("load_mnist", "markdown", "### What the digits look like\n\nThe first 16 training images, "
     "each one a row of 784 numbers in $[0, 1]$ drawn as 28 × 28 pixels (0 black, 1 white), "
     "with its label from `y_train` above it. Look at how differently people write the same "
     "digit: that is what the network must learn to see through."),
    ("load_mnist", "code", 'show_picture(plot_digits(X_train[:16], [f"label {k}" for k in y_train[:16]], '
     '"pictures/digits.png"))'),
    ("load_mnist", "markdown", "**Question.** How many numbers does the network see in one pass "
     "over the training images?\n\n<details><summary>Answer</summary>\n\n$60\\,000 \\times 784 "
     "= 47\\,040\\,000$ pixels, and 60,000 labels.\n</details>"),
    ("predict_proba", "markdown", "### What the untrained network says\n\nThe first six "
     "training images, each above ten bars: the probabilities $P$ the random network gives "
     "the digits 0 to 9. The orange bar is the digit it would answer, the largest probability. "
     "Look at the heights: every bar is near $0.1$, and the orange one is only a little "
     "taller, by chance, and rarely over the true digit. The network knows nothing yet."),
    ("predict_proba", "code", 'show_picture(plot_probabilities(X_train[:6], predict_proba(X_train[:6], '
     'Ws, bs),\n                                "pictures/untrained.png"))'),
    ("predict_proba", "markdown", "**Question.** Why is every probability close to $0.1$?\n\n"
     "<details><summary>Answer</summary>\n\nThe random weights are small, so the ten logits "
     "are close to each other; softmax of ten nearly equal scores is nearly $1/10$ each. "
     "Training has to make the true digit's score stand out.\n</details>"),
    ("cross_entropy", "markdown", "**Question.** A network gives the true digit probability "
     "$0.5$ on every image. What is its loss? And one that is sure and right, $P = 1$?\n\n"
     "<details><summary>Answer</summary>\n\n$-\\log 0.5 = 0.69$, and $-\\log 1 = 0$. The "
     "untrained network's $2.30 = -\\log 0.1$.\n</details>"),
    ("backward", "markdown", "**Question.** Why does the gradient of the output layer's "
     "scores come out as simply $P - Y$?\n\n<details><summary>Answer</summary>\n\n"
     "$\\partial L / \\partial Z_k$ for one image is $P_k - [k = y]$: the derivative of "
     "$\\log \\sum_j e^{Z_j}$ is softmax itself, and that of $-Z_y$ is $-1$ at the true digit. "
     "The $1/m$ comes from the mean over the batch.\n</details>"),
    ("gradient_check", "markdown", "**Question.** If `backward` forgot the $1/m$, what relative "
     "error would the check show for a batch of $m = 8$?\n\n<details><summary>Answer</summary>"
     "\n\nEvery gradient would be 8 times too large: $|8g - g| / (|8g| + |g|) = 7/9 \\approx "
     "0.78$, far above $10^{-6}$.\n</details>"),
    ("train", "markdown", "### Loss and accuracy, epoch by epoch\n\nThe picture above was "
     "redrawn as each epoch ended. Left the loss, right the accuracy; blue the training "
     "images (averaged over the epoch, while the network was still changing), orange the "
     "validation images, which it never learns from. Look at the orange curves: they are "
     "what the network does on new digits. The title says how long the epochs took."),
    ("train", "markdown", "**Question.** Is this network overfitting? What would the curves "
     "look like if it were?\n\n<details><summary>Answer</summary>\n\nNot yet: the validation "
     "loss still falls from epoch to epoch. Overfitting shows as a training loss that keeps "
     "falling while the validation loss turns up.\n</details>"),
    ("evaluate", "markdown", "### Which digits it mixes up\n\nRow: the true digit; column: "
     "the network's answer. The diagonal, dark, holds the right answers, about a thousand "
     "per digit. Look off the diagonal for the largest numbers: the pairs of digits it "
     "mixes up most, and in which direction."),
    ("evaluate", "code", 'show_picture(plot_confusion(result["confusion"], "pictures/confusion.png"))'),
    ("evaluate", "markdown", "### The mistakes it was most sure about\n\nEach title says the "
     "true digit, what the network said, and how sure it was. Look at whether you would have "
     "read them right: some are hard to read for people too, a few are labelled wrong in "
     "MNIST itself."),
    ("evaluate", "code", "probabilities = predict_proba(X_test, Ws, bs)\n"
     "worst = worst_errors(probabilities, y_test, 16)\n"
     "show_picture(plot_errors(X_test[worst], y_test[worst], probabilities[worst].argmax(axis=1),\n"
     '                 probabilities[worst].max(axis=1), "pictures/mistakes.png", n=16))'),
    ("evaluate", "markdown", "### What the first layer learned\n\nEach tile is one hidden "
     "unit's 784 weights drawn as 28 × 28, minus the random weights it started from: what "
     "training added. Red pixels push the unit up when there is ink on them, blue ones down. "
     "Look for strokes and blobs, pieces of digits: what each unit looks for."),
    ("evaluate", "code", "sizes = [W.shape[0] for W in Ws] + [Ws[-1].shape[1]]  # the network "
     "trained above\nstart = init_params(sizes, seed=0)[0][0]  # its random start: train's "
     "seed is 0\nshow_picture(plot_weights(Ws[0], \"pictures/weights.png\", start=start))"),
    ("augment_batch", "markdown", "### Distorted digits beside their originals\n\nEach row: "
     "two digits, each as it is in MNIST and then three random distortions of it. Look at "
     "how each copy is shifted, turned, slanted or bent a little, and is still plainly the "
     "same digit: the label stays."),
    ("augment_batch", "code", "originals = X_train[:6]\n"
     "distorted = augment_batch(np.repeat(originals, 3, axis=0), np.random.default_rng(1))\n"
     "shown = np.concatenate([np.vstack([o, d]) for o, d in zip(originals, distorted.reshape(6, 3, 784))])\n"
     'show_picture(plot_digits(shown, ["original", "distorted", "distorted", "distorted"] * 6,\n'
     '                 "pictures/distorted.png"))'),
    ("augment_batch", "markdown", "Compare the validation accuracies printed by the short run "
     "of `train_full` above with those of section [7]'s `train`, on the same 10,000 images. "
     "`train_full` changes more than the distortions and dropout (its learning rate glides "
     "down a cosine, for one); the last experiment at the end of the notebook runs it "
     "without the two, to see what they add."),
]

NOTEBOOK_TITLE = """\
# A neural network from scratch in NumPy

In this notebook you build, one piece at a time, a neural network that reads handwritten digits:

1. load MNIST, 70,000 labelled 28 × 28 pictures of digits;
2. give a network random weights, and run images through it (the forward pass);
3. measure how wrong it is (the loss), and work out by hand how each weight should change
   (backpropagation), checked against the definition of a derivative;
4. train it, watching it learn, then evaluate it on images it never saw, and save it;
5. make it generalise better with distorted digits and dropout.

The only library is NumPy (and matplotlib, for the pictures). Run the cells from top to
bottom: the whole notebook takes under a minute. The folded cell below holds what the
notebook needs but the lesson does not teach (the download, the pictures): run it, no need
to read it. The code after it is the lesson of [`mnist_from_scratch.py`](mnist_from_scratch.py),
sections [0] to [10], cell by cell.

**Notation.** $X$ $(m, 784)$: a batch of $m$ images, one per row. $W, b$: a layer's weights
$(n_{in}, n_{out})$ and biases $(n_{out})$. $Z = A_{prev} W + b$, $A = f(Z)$. $P =
\\mathrm{softmax}(Z_L)$: the ten probabilities. $Y$: the labels one-hot. $L = -\\frac{1}{m}
\\sum_i \\log P_{i, y_i}$: the loss. $dZ, dW, db$: the gradients $\\frac{\\partial L}{\\partial Z}$,
$\\frac{\\partial L}{\\partial W}$, $\\frac{\\partial L}{\\partial b}$."""

EXERCISES_TITLE = """\
# Exercises: a neural network from scratch in NumPy

You write the heart of a neural network that reads handwritten digits: the initialization,
ReLU and its derivative, softmax, the forward pass, the loss, backpropagation and the
gradient descent step. Each exercise is a function whose body says `# your code here`; its
docstring, the text above it and the comments in it give the equations, the shapes and the
names of the arrays. How to write them in NumPy is yours to find.

1. Run the folded cell below (the download, the pictures and the checks), then the data cell.
2. Write the body of each exercise (delete the `raise NotImplementedError` line), and run
   the cell.
3. Run the check cell below it. It says **✓ correct**, **✗ wrong** (what was expected, what
   came out, and a hint), or **… unfinished**.
4. When every check passes, run the rest: the notebook trains *your* network on MNIST and
   shows how well it reads digits it never saw.

Use NumPy only (`np.exp`, `np.maximum`, `@`, `.sum(axis=...)`, ...), and no Python loop over
the images: every line works on the whole batch at once. A few functions of the lesson are
folded because they would give an answer away; unfold each once its exercise passes."""

# The ending's experiments: each a sentence and one line that runs as it is at the end of the
# notebook (a test runs every one).
EXPERIMENTS = [
    ("A wider and deeper network, the command line's: two hidden layers of 512 and 256 units",
     "Ws, bs, history = train(X_train[:10000], y_train[:10000], X_train[55000:], y_train[55000:],\n"
     "                        hidden=(512, 256), epochs=3, on_epoch=learning_curves(show))"),
    ("A smaller learning rate: slower steps, slower learning",
     "Ws, bs, history = train(X_train[:10000], y_train[:10000], X_train[55000:], y_train[55000:],\n"
     "                        hidden=(128,), lr=0.02, epochs=3, on_epoch=learning_curves(show))"),
    ("All 55,000 training images instead of 10,000 (each epoch takes five and a half times as "
     "long)",
     "Ws, bs, history = train(X_train[:55000], y_train[:55000], X_train[55000:], y_train[55000:],\n"
     "                        hidden=(128,), epochs=3, on_epoch=learning_curves(show))"),
    ("tanh instead of ReLU (train_full of section [10] takes any activation of section [3])",
     "Ws, bs, history, _ = train_full(X_train[:10000], y_train[:10000], X_train[55000:],\n"
     "                                y_train[55000:], hidden=(128,), epochs=3, activation=\"tanh\",\n"
     "                                on_epoch=learning_curves(show))"),
    ("Dropout alone, a fifth of the hidden units switched off in every step",
     "Ws, bs, history, _ = train_full(X_train[:10000], y_train[:10000], X_train[55000:],\n"
     "                                y_train[55000:], hidden=(128,), epochs=3, dropout=0.2,\n"
     "                                on_epoch=learning_curves(show))"),
    ("train_full without distortions and dropout, to see what those two add to it",
     "Ws, bs, history, _ = train_full(X_train[:10000], y_train[:10000], X_train[55000:],\n"
     "                                y_train[55000:], hidden=(128,), epochs=3, augment=None,\n"
     "                                dropout=0.0, on_epoch=learning_curves(show))"),
]


def notebook_ending():
    """The notebook's last cell: what was built, and experiments to try next (EXPERIMENTS)."""
    experiments = "\n\n".join(f"- {words}:\n\n  ```python\n  " + code.replace("\n", "\n  ")
                              + "\n  ```" for words, code in EXPERIMENTS)
    return f"""\
## Summary: what you built

- A loader for the IDX files of MNIST, giving images as rows of 784 numbers in $[0, 1]$.
- A fully connected network: $Z = A_{{prev}} W + b$, $A = \\mathrm{{ReLU}}(Z)$, softmax at the
  end, with He initialization.
- The cross-entropy loss, computed stably with log-sum-exp.
- Backpropagation written by hand, $dZ_L = (P - Y)/m$, $dW = A_{{prev}}^\\top dZ$,
  $dA_{{prev}} = dZ\\,W^\\top$, and checked against finite differences.
- Mini-batch SGD with momentum, keeping the epoch that did best on the validation images;
  evaluation with a confusion matrix; saving a model to one `.npz` file.
- Distorted training digits and dropout, which make it generalise better, and `train_full`,
  the training of the command line, which adds a learning rate that glides down a cosine.

## Where next

Change one thing, run it in a new cell, watch the curves, then run the cells of section [8]
again to see the test accuracy and the confusion matrix change:

{experiments}

- **Fashion-MNIST**: the same network on pictures of clothes (`python mnist_from_scratch.py
  train --dataset fashion`). How much harder is it?
- **The command line**: `python mnist_from_scratch.py train` trains the full network
  (about 99 % on the test images); `predict my_digit.png` reads a photo of your own
  handwriting, `draw` lets you draw digits and watch the network guess, `serve` puts it on a
  web page. Section [11] of the file shows how a photo becomes a 28 × 28 input."""


# What the lesson says in the command line's terms, in a notebook's.
NOTEBOOK_WORDS = {
    "`python mnist_from_scratch.py download` puts it there":
        "the cell `get_mnist(\"data\")` at the top of this notebook put it there",
    "`python mnist_from_scratch.py download` fetches them into data/ and checks them":
        "the cell `get_mnist(\"data\")` at the top of this notebook fetched them into `data` "
        "and checked them",
}


def notebook_cell(kind, text, **metadata):
    """One nbformat 4 cell: kind "markdown" or "code"."""
    if kind == "markdown":
        for words, instead in NOTEBOOK_WORDS.items():
            text = text.replace(words, instead)
    cell = {"cell_type": kind, "metadata": metadata, "source": text.strip("\n").splitlines(True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def get_mnist_code():
    """The notebook's get_mnist: MNIST into a folder beside the notebook, with checksums."""
    files = "".join(f'    "{name}.gz": "{sha}",\n' for name, sha in MNIST_FILES.items())
    mirrors = "".join(f'    "{url}",\n' for url in MNIST_MIRRORS)
    return f"""\
MNIST_MIRRORS = [
{mirrors}]
MNIST_SHA256 = {{  # name -> SHA-256 of its contents: a download is kept only if complete and genuine
{files}}}


def get_mnist(folder="data"):
    \"\"\"The four MNIST files (11 MB) into `folder`, unless they are there.\"\"\"
    os.makedirs(folder, exist_ok=True)
    for name, sha256 in MNIST_SHA256.items():
        path = os.path.join(folder, name)
        for mirror in MNIST_MIRRORS:
            if os.path.exists(path) or os.path.exists(path[:-3]):
                break
            try:
                with urllib.request.urlopen(mirror + name, timeout=30) as response:
                    data = response.read()
                genuine = hashlib.sha256(gzip.decompress(data)).hexdigest() == sha256
            except (OSError, EOFError) as error:  # no network, or a cut-off file
                print(f"{{mirror}}: {{error}}")
                continue
            if genuine:
                with open(path + ".part", "wb") as f:
                    f.write(data)
                os.replace(path + ".part", path)
        if not (os.path.exists(path) or os.path.exists(path[:-3])):
            raise RuntimeError(f"could not download {{name}}. Offline? Put the four MNIST .gz files "
                               f"in the folder '{{folder}}' beside this notebook (Jupyter: the file "
                               f"browser's Upload button; Colab: the Files panel on the left), "
                               f"then run this cell again.")
    print("MNIST is in", os.path.abspath(folder))"""


# What only the notebook needs, in its folded first code cell: showing a picture file, and the
# training curves redrawn in place after every epoch (an IPython display handle).
NOTEBOOK_TOOLS = '''\
def show_picture(path):
    """Show below the cell the PNG file a picture function wrote."""
    from IPython.display import Image, display
    display(Image(filename=path))


def learning_curves(then=None, path="pictures/history.png"):
    """An on_epoch function for train: after every epoch it redraws the loss and accuracy
    curves below the cell (the same picture, updated in place), then calls then(entry)."""
    from IPython.display import Image, display
    history, shown = [], []

    def on_epoch(entry):
        history.append(entry)
        picture = Image(filename=plot_history(history, path))
        if shown:
            shown[0].update(picture)
        else:
            shown.append(display(picture, display_id=True))
        if then is not None:
            then(entry)
    return on_epoch'''


def definitions(source, names):
    """The source of the named top-level definitions (functions, classes, assignments) of
    `source`, in the order of `names`."""
    import ast
    lines, found = source.split("\n"), {}
    for node in ast.parse(source).body:
        name = getattr(node, "name", None) or (
            node.targets[0].id if isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name) else None)
        if name in names:
            found[name] = "\n".join(lines[node.lineno - 1:node.end_lineno])
    return [found[name] for name in names if name in found]


FOLDED = {"jupyter": {"source_hidden": True}, "tags": ["hide-input"]}  # a cell to run, not read


def helpers_cell(source, exercises):
    """The notebook's first code cell, folded (in Colab too: a form titled by its first
    line): get_mnist, the picture functions of section [12], show_picture, learning_curves
    and, for the exercises, their checks. The lesson does not teach these: run, not read."""
    parts = ["# @title The notebook's helpers: the download, the pictures"
             + (", the checks" if exercises else "") + " (run this cell; no need to read it)\n"
             "import gzip, hashlib, os, sys, urllib.request\n\nimport numpy as np\n\n"
             'os.makedirs("pictures", exist_ok=True)', get_mnist_code()]
    for tool in definitions(source, PICTURE_TOOLS):  # even one the lesson defines later
        tool = docstring_aside(tool, 0, note="")[0]  # to run, not to read: kept short
        parts.append("\n".join(filter(str.strip, tool.split("\n"))))
    parts.append(NOTEBOOK_TOOLS)
    if exercises:
        parts.append(f"EXERCISES = {list(EXERCISES)!r}\nFOLDED_UNTIL = {FOLDED_UNTIL!r}")
        checks = CHECK_TOOLS + [f"check_{name}" for name in EXERCISES] + ["exercise_progress"]
        parts += definitions(source, checks)
    return notebook_cell("code", "\n\n\n".join(parts), cellView="form", **FOLDED)


def setup_cells(source, exercises):
    """The cells before the lesson: the title, the folded helpers, and the data."""
    return [notebook_cell("markdown", EXERCISES_TITLE if exercises else NOTEBOOK_TITLE),
            helpers_cell(source, exercises),
            notebook_cell("code", 'get_mnist("data")  # the four MNIST files into the folder '
                          '`data` beside this notebook, once')]


def exercise_cells(name, source):
    """An exercise: its heading, the function with "your code here" for a body, its check."""
    import inspect
    number = list(EXERCISES).index(name) + 1
    call = ", ".join(inspect.signature(globals()["check_" + name]).parameters)
    cells = [notebook_cell("markdown", f"### Exercise {number}: `{name}`"),
             notebook_cell("code", exercise_stub(source, number), exercise=name),
             notebook_cell("code", f"check_{name}({call})", check=name)]
    if number == len(EXERCISES):
        cells += [notebook_cell("markdown", "### All exercises done?"),
                  notebook_cell("code", "exercise_progress(globals())")]
    return cells


def function_cells(name, source, folded_until=None, foldable=True):
    """A function (or a run of statements) of the lesson as it is: a code cell, its docstring
    moved to the text above when it is long, folded when it is longer than a screen anyway
    (if foldable), or folded until the exercise `folded_until` passes, when it would give that
    answer away."""
    code, aside = docstring_aside(source, CELL_LINES)
    cells = [notebook_cell("markdown", aside)] if aside else []
    if folded_until:
        number = list(EXERCISES).index(folded_until) + 1
        cells.append(notebook_cell("markdown", f"*`{name}` is folded: it would give away the "
                                   f"answer to exercise {number}, `{folded_until}`. Unfold it "
                                   f"once that exercise's check says correct.*"))
        return cells + [notebook_cell("code", code, **FOLDED)]
    if foldable and len(code.split("\n")) > FOLD_LINES:
        cells.append(notebook_cell("markdown", f"*`{name}` takes more than a screen "
                                   f"({len(code.splitlines())} lines): its code is folded; "
                                   f"unfold it, or read it in the file.*"))
        return cells + [notebook_cell("code", code, **FOLDED)]
    return cells + [notebook_cell("code", code, **({"exercise": name} if name in EXERCISES else {}))]


def imports_used(code, rest):
    """Section [0]'s code without the imports and definitions that `rest` (the other lesson
    sections' code) never uses: the notebook's [0] imports what its lesson needs."""
    import ast
    import re
    lines, kept = code.split("\n"), []
    for node in ast.parse(code).body:
        names = ([alias.asname or alias.name for alias in node.names]
                 if isinstance(node, (ast.Import, ast.ImportFrom)) else [getattr(node, "name", "")])
        used = r"\b{}\." if isinstance(node, (ast.Import, ast.ImportFrom)) else r"\b{}\b"
        if not any(re.search(used.format(re.escape(name)), rest) for name in names if name):
            continue
        kept.append("\n".join(lines[node.lineno - 1:node.end_lineno]))
    return "\n".join(kept)


def paired(pieces):
    """Code pieces with a function X_derivative joined to the cell of X just before it (an
    activation and its slope read together), unless either is an exercise."""
    joined = []
    for piece in pieces:
        previous = joined[-1] if joined else None
        if (piece[0] == "code" and len(piece) > 2 and piece[2] and previous and previous[0] == "code"
                and len(previous) > 2 and piece[2] == f"{previous[2]}_derivative"
                and not {piece[2], previous[2]} & set(EXERCISES)):
            joined[-1] = ("code", previous[1] + "\n\n\n" + piece[1], previous[2])
        else:
            joined.append(piece)
    return joined


def in_notebook(try_code):
    """A "Try it" code as the notebook runs it: a training that prints every epoch with
    on_epoch=show also draws its curves there, as each epoch ends."""
    import re
    return re.sub(r"on_epoch=show\b", "on_epoch=learning_curves(show)", try_code)


def what_comes_next(code):
    """One sentence naming what a code cell defines, from its docstring's first sentence."""
    import ast
    import re
    node = ast.parse(code).body[0]
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        doc = (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " ")
        first = re.split(r";\s|(?<=[.:])\s+(?=[A-Z])", doc)[0].rstrip(".:") if doc else ""
        word = first.split(" ")[0]
        if len(word) > 1 and word[0].isupper() and word[1:].islower():
            first = first[0].lower() + first[1:]
        return f"Next, `{node.name}`" + (f": {first}." if first else ".")
    names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
    return f"Next, `{names[0]}`." if names else "Next:"


def text_between_code(cells):
    """The cells with a sentence of text before any code cell that would be the third in a
    row, so that text and code alternate."""
    spaced, in_a_row = [], 0
    for cell in cells:
        if cell["cell_type"] == "code":
            in_a_row += 1
            if in_a_row > 2 and not cell["metadata"].get("check"):
                spaced.append(notebook_cell("markdown", what_comes_next("".join(cell["source"]))))
                in_a_row = 1
        else:
            in_a_row = 0
        spaced.append(cell)
    return spaced


def lesson_notebook(source, exercises=False):
    """The lesson cells of `source` (this file's text) as a notebook, a dict in the nbformat 4
    layout ready for json.dump; with exercises=True the assignment (see EXERCISES)."""
    cells, additions = setup_cells(source, exercises), list(NOTEBOOK_ADDITIONS)
    sections = [cell for cell in split_into_cells(source) if cell[0] in LESSON_SECTIONS]
    for number, title, text in sections:
        intro, code = split_cell(text)
        if number == 0:
            code = imports_used(code, "".join(split_cell(t)[1] for n, _, t in sections if n != 0))
        cells.append(notebook_cell("markdown", f"## [{number}] {title}\n\n"
                                   + comment_to_markdown(intro)))
        names, after_try = set(), False
        for kind, text, *name in paired(code_pieces(code)):
            name = name[0] if name else None
            names.add(name)
            if kind == "try":
                cells.append(notebook_cell("markdown", "**Try it**" + (f": {inline_latex(text)}"
                                                                       if text else "")))
            elif kind == "markdown":
                cells.append(notebook_cell("markdown", text))
            elif exercises and name in EXERCISES:
                cells += exercise_cells(name, text)
            else:
                cells += function_cells(name, in_notebook(text) if after_try else text,
                                        FOLDED_UNTIL.get(name) if exercises else None,
                                        foldable=number not in SHOWN_WHOLE)
            after_try = kind == "try"
        for addition in [a for a in additions if a[0] in names]:  # after the section
            cells.append(notebook_cell(addition[1], addition[2]))
            additions.remove(addition)
    cells += [notebook_cell(kind, text) for _, kind, text in additions]
    cells.append(notebook_cell("markdown", notebook_ending()))
    return {"nbformat": 4, "nbformat_minor": 4, "cells": text_between_code(cells),
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"},
                         "language_info": {"name": "python"}}}


def add_notebook_command(add, shared):
    """`notebook` and its options (add and shared: see build_parser)."""
    p = add("notebook", "write the lesson as a Jupyter notebook, or (--exercises) the assignment")
    p.add_argument("--out", metavar="FILE.ipynb",
                   help="notebook to write (default: mnist_from_scratch.ipynb, with --exercises "
                        "mnist_from_scratch_exercises.ipynb)")
    p.add_argument("--exercises", action="store_true",
                   help="write the assignment: the student writes the core functions, and a "
                        "check after each one says whether it is right")
    p.set_defaults(run=command_notebook, paths={"out": "notebook to write"})


def command_notebook(args):
    if args.out is None:
        args.out = f"mnist_from_scratch{'_exercises' if args.exercises else ''}.ipynb"
        PATH_CHECKS["notebook to write"](args.out, "--out")
    with open(os.path.abspath(__file__), encoding="utf-8") as f:
        notebook = lesson_notebook(f.read(), exercises=args.exercises)
    text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    try:
        write_atomically(args.out, lambda f: f.write(text.encode("utf-8")))
    except OSError as e:
        raise UserError(f"cannot write {args.out}: {e.strerror}; choose another path with --out")
    what = "the exercises" if args.exercises else "the lesson"
    print(f"wrote {what} to {args.out} ({len(notebook['cells'])} cells); open it with Jupyter, "
          f"JupyterLab, VS Code or Google Colab")
    return 0


# %% [16] Getting the data: downloads and checksums
#
# The lesson's load_mnist (section [1]) reads the four IDX files; this section puts them there
# and makes sure they are the real ones. The command line calls load_dataset, which
#   1. downloads the files that are missing, trying each mirror in turn, and writes each one
#      atomically (write_atomically, section [9]): an interrupted download leaves no half file;
#   2. checks every file against the SHA-256 of the real data set, so that a damaged copy, or
#      another data set's file, is refused with a reason a person can act on;
#   3. parses them with section [1]'s parse_idx and images_and_labels, as load_mnist does (each
#      file decompressed once, for its checksum and its numbers), or, when there are no IDX
#      files, reads the CSV files with load_csv.
# The `download` command, at the end of the section, does the first two without training.

MNIST_FILES = {  # name -> SHA-256 of the decompressed IDX bytes (the same for every mirror)
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_GZ_SHA256 = {  # SHA-256 of the .gz files exactly as the mirrors serve them
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017, arXiv:1708.07747) is a drop-in replacement: four
# files with the same names, format and sizes, showing clothes instead of digits. Its checksums
# have the same roles as MNIST's. Some copies (Debian's package, for one) are compressed again,
# so their .gz bytes differ while the images inside are the same: the SHA-256 of the
# decompressed bytes is the one that decides.
FASHION_FILES = {  # name -> SHA-256 of the decompressed IDX bytes
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_GZ_SHA256 = {  # SHA-256 of the .gz files as the project publishes them
    "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
FASHION_MIRRORS = [
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
]

# Every data set the program knows, by the name `--dataset` takes. `folder` is where it is
# downloaded to and looked for (unless --data-dir says otherwise), `csv` the file pairs that may
# stand in for the IDX files, `classes` what the ten labels mean.
DATASETS = {
    "mnist": dict(title="MNIST", folder="data", files=MNIST_FILES, gz_sha256=MNIST_GZ_SHA256,
                  mirrors=MNIST_MIRRORS, csv=[("mnist_train.csv", "mnist_test.csv"),
                                              ("train.csv", "test.csv")],
                  classes=[str(digit) for digit in range(10)]),
    "fashion": dict(title="Fashion-MNIST", folder=os.path.join("data", "fashion"),
                    files=FASHION_FILES, gz_sha256=FASHION_GZ_SHA256, mirrors=FASHION_MIRRORS,
                    csv=[("fashion-mnist_train.csv", "fashion-mnist_test.csv")],
                    classes=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                             "Shirt", "Sneaker", "Bag", "Ankle boot"]),
}


def download_mnist(data_dir, mirrors=None, timeout=10, deadline_seconds=30, dataset="mnist"):
    """Fetch the four IDX .gz files of a data set (a key of DATASETS) into data_dir, trying
    each of its mirrors in turn.

    Every file is checked against its SHA-256 and written atomically (to a temporary file,
    renamed when complete), so an interrupted download never leaves half a file behind.
    """
    import urllib.request
    spec = DATASETS[dataset]
    mirrors = spec["mirrors"] if mirrors is None else mirrors
    os.makedirs(data_dir, exist_ok=True)
    start = time.monotonic()
    for name, sha in spec["gz_sha256"].items():
        target = os.path.join(data_dir, name + ".gz")
        if os.path.exists(target):
            continue
        errors = []
        for mirror in mirrors:
            if time.monotonic() - start > deadline_seconds:
                break
            url = mirror + name + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    size = int(response.headers.get("Content-Length") or 0)
                    chunks, got = [], 0
                    while True:
                        chunk = response.read(1 << 16)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        got += len(chunk)
                        if size and sys.stderr.isatty():  # a line that counts up, on a terminal
                            print(f"\rdownloading {name}.gz  {100 * got // size:3d} %",
                                  end="", file=sys.stderr, flush=True)
                if sys.stderr.isatty():
                    print(file=sys.stderr)  # end the line that counted up
                data = b"".join(chunks)
            except Exception as e:  # no network, DNS failure, HTTP error, time-out ...
                errors.append(f"{url}: {e}")
                continue
            # The .gz as published, or the same images compressed again (a different .gz).
            if hashlib.sha256(data).hexdigest() != sha and not gzip_holds(data, spec["files"][name]):
                errors.append(f"{url}: checksum does not match")
                continue
            write_atomically(target, lambda f: f.write(data))
            print(f"downloaded {name}.gz ({len(data) / 1e6:.1f} MB, checksum correct)",
                  file=sys.stderr)
            break
        if not os.path.exists(target):
            why = errors[-1].split(": ", 1)[-1][:80] if errors else "time limit reached"
            raise UserError(
                f"could not download {name}.gz: no mirror answered (last: {why})\n"
                f"copy {spec['title']}'s four .gz files into {data_dir}/ by hand (see the README), "
                f"or point --data-dir at a folder that has them")


def gzip_holds(data, sha256):
    """True when the bytes `data` are a gzip file whose decompressed bytes have this SHA-256."""
    try:
        return hashlib.sha256(gzip.decompress(data)).hexdigest() == sha256
    except (OSError, EOFError):  # not gzip at all, or cut off
        return False


def find_file(data_dir, names):
    """The first of `names` that exists in data_dir, or None."""
    for name in names:
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    return None


def dataset_option(dataset):
    """The words to add to a command for this data set: "" for MNIST, " --dataset fashion"."""
    return "" if dataset == "mnist" else f" --dataset {dataset}"


def not_the_expected_file(path, raw, stem, dataset, data_dir):
    """Why the file at path (its bytes: raw) is not the expected file `stem` of `dataset`, in
    one line: another data set's file says which option loads it; anything else is damaged."""
    digest = hashlib.sha256(raw).hexdigest()
    expected = DATASETS[dataset]["title"]
    for other, spec in DATASETS.items():
        for other_stem, sha in spec["files"].items():
            if digest != sha:
                continue
            if other == dataset:  # the right data set, under another file's name
                return (f"{path}: holds {expected}'s {other_stem}, not its {stem}; give the "
                        f"four files their own names")
            return (f"{path}: these are {spec['title']}'s files, not {expected}'s; use "
                    f"--dataset {other} --data-dir {data_dir}")
    return (f"{path}: not the real {expected} {stem} (checksum differs); delete it and run "
            f"`download{dataset_option(dataset)}` again")


def load_checked_idx(data_dir, dataset="mnist"):
    """The data set's four IDX files in data_dir, each decompressed once, checked against the
    SHA-256 of the real one (a ValueError that says why in one line otherwise) and parsed:
    X_train, y_train, X_test, y_test as load_mnist returns them."""
    arrays, paths = [], []
    for stem, sha in DATASETS[dataset]["files"].items():
        path = find_idx_file(data_dir, stem)
        raw = read_bytes(path)
        if hashlib.sha256(raw).hexdigest() != sha:
            raise ValueError(not_the_expected_file(path, raw, stem, dataset, data_dir))
        arrays.append(parse_idx(raw, path))
        paths.append(path)
    X_train, y_train = images_and_labels(arrays[0], arrays[1], paths[0])
    X_test, y_test = images_and_labels(arrays[2], arrays[3], paths[2])
    return X_train, y_train, X_test, y_test


def load_dataset(data_dir="data", download=True, dataset="mnist"):
    """Return X_train (60000, 784), y_train, X_test (10000, 784), y_test; X float32 in [0, 1].

    Looks in data_dir, in this order, for
      1. the IDX files train-images-idx3-ubyte, ... (with or without .gz);
      2. CSV files: mnist_train.csv + mnist_test.csv (label first, no header) or Kaggle's
         train.csv + test.csv (a header; test.csv has no labels, so y_test is None);
      3. nothing: it downloads the IDX files (unless download=False).
    IDX files are checked against the SHA-256 of the real MNIST, so a damaged copy is caught,
    and parsed as load_mnist parses them. dataset="fashion" loads Fashion-MNIST the same way (see
    DATASETS for its file names).
    """
    spec = DATASETS[dataset]
    if not all(find_idx_file(data_dir, stem) for stem in spec["files"]):
        for train_csv, test_csv in spec["csv"]:
            csv = (find_file(data_dir, [train_csv]), find_file(data_dir, [test_csv]))
            if all(csv):
                X_train, y_train = load_csv(csv[0])
                X_test, y_test = load_csv(csv[1])
                if y_train is None:
                    raise ValueError(f"{csv[0]}: the training file has no label column")
                return (to_unit_float(X_train), y_train.astype(np.int64), to_unit_float(X_test),
                        None if y_test is None else y_test.astype(np.int64))
        if not download:
            raise UserError(f"{spec['title']} not found in {data_dir}/: run "
                            f"`download{dataset_option(dataset)}`, or use --data-dir")
        download_mnist(data_dir, dataset=dataset)  # fetches only the files that are missing
    return load_checked_idx(data_dir, dataset)


def add_download_command(add, shared):
    """`download` and its options (add and shared: see build_parser)."""
    p = add("download", "download MNIST without training", shared.images, shared.data)
    p.set_defaults(run=command_download, paths={"data_dir": "data folder"})


def command_download(args):
    dataset = with_dataset_defaults(args)
    download_mnist(args.data_dir, dataset=dataset)
    load_dataset(args.data_dir, download=False, dataset=dataset)  # checks every file
    print(f"{DATASETS[dataset]['title']} is ready in {args.data_dir}/")
    return 0


# %% [17] Command line

DATA_DIR = "data"
MODEL_PATH = "model.npz"

# Every setting of `train`, in one table. "mnist" holds the defaults: train_full's own (section
# [10]), plus the distortions and the validation images the command line adds. "fashion" is
# what --dataset fashion changes: chosen on its validation images (mirrored clothes and centred
# inputs helped; docs/results.md), and written out so that a change to the digits' defaults does
# not move them. "best" is what --recipe best changes: a bigger network, dropout and one
# distortion per image, minutes rather than seconds and more accurate (the README's results
# table); a recipe wins over the data set's row, and a flag the user gives wins over both.
TRAIN_SETTINGS = {
    "mnist": dict(hidden=(512, 256), activation="relu", epochs=9, batch_size=256, lr=0.2,
                  momentum=0.9, weight_decay=5e-5, schedule="cosine", center=True,
                  val_size=5000,  # training images held out to choose the best epoch
                  seed=0, augment="light", distortions=2048, dropout=0.0),
    "fashion": dict(hidden=(512, 256), epochs=40, batch_size=128, lr=0.1, momentum=0.9,
                    weight_decay=5e-5, schedule="cosine", dropout=0.0, augment="mirror",
                    center=True),
    "best": dict(hidden=(1024, 1024), dropout=0.2, augment="light", epochs=50, lr=0.05,
                 batch_size=128, distortions=0, center=False),
}
RECIPES = ["best"]  # the rows of TRAIN_SETTINGS that --recipe chooses

# Named strengths for the command line (--augment NAME). "light" is the default: on the
# validation images and on USPS it did clearly better than "none" and as well as "strong"
# (docs/results.md). "mirror" is for clothes (Fashion-MNIST's default), not for digits.
AUGMENT_PRESETS = {
    "none": dict(max_shift=0.0, max_rotation_deg=0.0, max_scale=0.0, max_shear=0.0,
                 elastic_alpha=0.0, elastic_sigma=0.0),
    "light": {},  # augment_batch's own defaults, written once there
    "strong": dict(max_shift=2.0, max_rotation_deg=10.0, max_scale=0.1, max_shear=0.2,
                   elastic_alpha=34.0, elastic_sigma=5.0),
    "mirror": dict(max_shift=0.0, max_rotation_deg=0.0, max_scale=0.0, max_shear=0.0,
                   elastic_alpha=0.0, elastic_sigma=0.0, mirror=0.5),
}




def checked_number(convert, is_allowed, rule):
    """An argparse type: text -> int or float, refused with a one-line reason when not allowed."""
    what = "a whole number" if convert is int else "a number"

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not is_allowed(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


positive_int = checked_number(int, lambda v: v >= 1, "at least 1")
non_negative_int = checked_number(int, lambda v: v >= 0, "0 or more")
positive_float = checked_number(float, lambda v: 0 < v < math.inf, "a positive number")
non_negative_float = checked_number(float, lambda v: 0 <= v < math.inf, "0 or more")
fraction_below_one = checked_number(float, lambda v: 0 <= v < 1, "at least 0 and less than 1")


def layer_sizes(text):
    """'512,256' -> (512, 256); '' or 'none' -> () (no hidden layer: softmax regression)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes separated by commas like 512,256, got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"every layer needs at least 1 unit, got {text!r}")
    return sizes


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look) and exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- The guard: every path a command reads or writes is checked before it starts work ---
#
# A careless path must not cost a run: `train --model nodir/m.npz` would otherwise train for
# minutes and only then find that the folder does not exist. So each command declares, where
# its options are added, which of them name a file or folder and how it uses them
# (set_defaults(paths={dest: kind})), and main() checks every one of them with
# check_declared_paths before the command runs. Each check raises UserError, one line
# (at most one more saying what to do), so the user sees that and exit status 2.


def flag_name(dest):
    """The option as the user types it: 'plot_history' -> '--plot-history'."""
    return "--" + dest.replace("_", "-")


def check_folder_can_be_written(folder, flag, path):
    """Write and delete a tiny file in folder: the only test that also works for root,
    read-only disks and special file systems, where permission bits do not tell."""
    probe = os.path.join(folder, f".write-test.{os.getpid()}.tmp")
    try:
        with open(probe, "xb"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {folder} ({e.strerror})\n"
                        f"choose a folder you can write to") from None


def check_file_to_read(path, flag, what):
    """A file to read must exist, be a file (not a folder) and open for reading."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a folder, not {what}")
    if not os.path.exists(path):
        kind = "folder" if path.endswith(("/", os.sep)) else "file"
        raise UserError(f"{flag} {path}: no such {kind}")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot be read ({e.strerror})") from None


def check_file_to_write(path, flag, suffix):
    """A file to write: not a folder, named with the right suffix, in a folder that exists
    and can be written to. (The file itself may exist: it is replaced atomically.)"""
    if os.path.isdir(path):
        example = os.path.join(path, "name" + suffix)
        raise UserError(f"{flag} {path}: is a folder; give a file name, like {example}")
    if not path.lower().endswith(suffix):
        raise UserError(f"{flag} {path}: the file name must end in {suffix}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        shown = os.path.dirname(path)
        what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise UserError(f"{flag} {path}: the folder {shown} {what}\n"
                        f"create the folder first, or choose another file name")
    check_folder_can_be_written(folder, flag, path)


def check_folder_to_write(path, flag):
    """A folder to write files into: an existing folder, or one that can be created where
    the nearest existing folder above it can be written to."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, not a folder; give a folder name")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder; give a folder name")
    check_folder_can_be_written(existing, flag, path)


def check_model_to_read(path, flag):
    """A model file that is there, and is a model of this program (load_model says why not)."""
    if not os.path.exists(path):
        raise UserError(f"no model at {path}: run `train` first, or give --model FILE")
    check_file_to_read(path, flag, "a model file")
    load_model(path)  # milliseconds, even for the largest recipe's model


def check_model_to_write(path, flag):
    """Where train saves: a writable .npz path, and if a file is there, a model of this
    program (anything else would be lost when it is replaced)."""
    check_file_to_write(path, flag, ".npz")
    if os.path.exists(path):
        try:
            load_model(path)
        except ValueError:
            raise UserError(f"{flag} {path}: the file there is not a model of this program, "
                            f"and saving would replace it\nchoose another file name") from None


def check_images_to_read(paths, flag):
    """Every path named on the command line must exist (a typo is caught before any work);
    a broken file inside a folder only shows when it is read, and is reported then."""
    for path in paths:
        if not os.path.exists(path):
            kind = ("folder" if path.endswith(("/", os.sep)) else
                    "image file" if path.lower().endswith((".png", ".jpg", ".jpeg")) else
                    "file or folder")
            raise UserError(f"{path}: no such {kind}")


def check_data_folder(path, flag):
    """The MNIST folder may be missing (it is then downloaded into), but it is no file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, not a folder; give the folder with the MNIST files")


PATH_CHECKS = {  # how a command uses a path -> the check run on it before the command starts
    "model to read": check_model_to_read,
    "model to write": check_model_to_write,
    "picture to write": lambda path, flag: check_file_to_write(path, flag, ".png"),
    "notebook to write": lambda path, flag: check_file_to_write(path, flag, ".ipynb"),
    "folder to write": check_folder_to_write,
    "images to read": check_images_to_read,
    "data folder": check_data_folder,
}


def os_error_text(error):
    """'samples/3.png: Is a directory': the file the user named (for a failed rename of a
    temporary file, the rename's target) and the system's reason."""
    where = error.filename2 or error.filename
    return f"{where}: {error.strerror}" if where and error.strerror else str(error)


def check_declared_paths(args):
    """Run the check of every path option the command declared (its set_defaults(paths=...))."""
    for dest, kind in getattr(args, "paths", {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            PATH_CHECKS[kind](value, flag_name(dest))


def busy_machine_notice(load=None, cores=None, environ=os.environ):
    """One line of advice when other programs already keep the cores busy, else None.

    NumPy's BLAS starts one thread per core, and each matrix product waits for its slowest
    thread: two default trainings at once on two cores took six times as long each as one
    alone, and with one thread each about 1.5 times (docs/results.md). load: the load average
    over the last minute (os.getloadavg, where the system has one); busy means at least half
    the cores' worth, as one busy core of two is already enough to slow BLAS down. Nothing to
    say when the thread count is already chosen.
    """
    if any(environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return None
    cores = cores or os.cpu_count() or 1
    if load is None and hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
    if load is None or cores < 2 or load < cores / 2:
        return None
    return (f"note: the cores are busy (load average {load:.1f} on {cores} cores), which can make "
            f"training many times slower; start it with OPENBLAS_NUM_THREADS=1 in front")


def progress_printer(epochs):
    """A function that shows how far the current epoch is, on a terminal only."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(epoch, fraction_done):
        now = time.monotonic()
        if now - last[0] > 0.2 or fraction_done >= 1:
            last[0] = now
            print(f"\repoch {epoch}/{epochs} {min(fraction_done, 1):6.1%}", end="",
                  file=sys.stderr, flush=True)
    return show


def print_epoch(entry, epochs):
    val = (f"val loss {entry['val_loss']:.4f} acc {100 * entry['val_acc']:6.2f} %"
           if entry["val_acc"] is not None else "no validation")
    if sys.stderr.isatty():
        print("\r" + " " * 30 + "\r", end="", file=sys.stderr, flush=True)
    print(f"epoch {entry['epoch']:>3}/{epochs}  train loss {entry['train_loss']:.4f} "
          f"acc {100 * entry['train_acc']:6.2f} %  {val}  {entry['seconds']:5.1f} s", flush=True)


def saved_accuracy(meta):
    """'98.55 % on the test images' (or on the validation images) for a model's meta, or ''."""
    for key, images in (("test_accuracy", "test"), ("val_accuracy", "validation")):
        if meta.get(key) is not None:
            return f"{100 * meta[key]:.2f} % on the {images} images"
    return ""


def same_measure(new_meta, old_meta):
    """(new accuracy, old accuracy) measured on the same kind of images, or None."""
    for key in ("test_accuracy", "val_accuracy"):
        if new_meta.get(key) is not None and old_meta.get(key) is not None:
            return new_meta[key], old_meta[key]
    return None


# Replacing a saved model. A run saves where --model says, and a note at the start says when a
# model is there already, while there is still time to stop or rename. A run never replaces a
# clearly more accurate model (measured on the test images, or on the validation images when
# the test set has no labels): when a finished run's model is more than a point less accurate
# than the saved one, or a run stopped with Ctrl-C less accurate at all (or not comparable),
# the old model stays and the new one is saved beside it, as NAME.worse.npz or
# NAME.interrupted.npz. Nothing is thrown away.
CLEARLY_WORSE = 0.01  # a point: over ten times what a change of seed moves the default


def where_to_save(path, meta, previous, interrupted):
    """Where `train` saves its model (meta) when the model `previous` is at path (see above)."""
    compared = same_measure(meta, previous) if previous is not None else None
    if previous is None or (not interrupted and compared is None):
        return path
    if interrupted and (compared is None or compared[0] < compared[1]):
        return os.path.splitext(path)[0] + ".interrupted.npz"
    if not interrupted and compared[0] < compared[1] - CLEARLY_WORSE:
        return os.path.splitext(path)[0] + ".worse.npz"
    return path


# What `--dataset` changes besides the files and the settings (TRAIN_SETTINGS): each data set
# has its own model file, so training on one does not replace the other's model.
MODEL_FOR_DATASET = {"mnist": MODEL_PATH, "fashion": "fashion_model.npz"}


def with_dataset_defaults(args):
    """The data set of a command that reads its images (--dataset); fills in --data-dir."""
    if args.data_dir is None:
        args.data_dir = DATASETS[args.dataset]["folder"]
    return args.dataset


def load_model_and_dataset(args):
    """Load --model; return Ws, bs, meta, the data set it was trained on (its meta says; models
    saved before there was a choice are MNIST's), which --dataset, when given, must match, and
    its class names (None for MNIST: the digits name themselves). Fills in --data-dir."""
    dataset = getattr(args, "dataset", None)
    Ws, bs, meta = load_model(args.model)
    trained_on = meta.get("dataset", "mnist")
    if trained_on not in DATASETS:
        raise UserError(f"{args.model} was trained on a data set this program does not know "
                        f"({trained_on!r})")
    if dataset and dataset != trained_on:
        raise UserError(f"{args.model} was trained on {DATASETS[trained_on]['title']}, not "
                        f"{DATASETS[dataset]['title']}; give --model a model trained with "
                        f"`train{dataset_option(dataset)}`")
    if getattr(args, "data_dir", "") is None:
        args.data_dir = DATASETS[trained_on]["folder"]
    class_names = meta.get("classes") or DATASETS[trained_on]["classes"]
    return Ws, bs, meta, trained_on, None if trained_on == "mnist" else class_names


def train_settings(args):
    """Every setting of this run (TRAIN_SETTINGS' names): MNIST's defaults, changed by the data
    set's row, then by the recipe's, then by the flags the user gave (argparse leaves the others
    out of args). They are set on args as well, for the code that reads them there."""
    settings = dict(TRAIN_SETTINGS["mnist"])
    for row in (args.dataset, args.recipe):
        settings.update(TRAIN_SETTINGS.get(row) or {})
    settings.update({name: getattr(args, name) for name in settings if hasattr(args, name)})
    vars(args).update(settings)
    return settings


def describe_training(args, n, n_val, dataset):
    """The line that says, before the first epoch, what is trained on what, and how."""
    sizes = [784, *args.hidden, 10]
    # augment_batch draws distortions 256 at a time, and never more than one per image.
    drawn = min(n, math.ceil(args.distortions / 256) * 256) if args.distortions else n
    distortions = (f" ({drawn} drawn per epoch)" if drawn < n else " (one for every image)"
                   ) if args.augment in ("light", "strong") else ""  # "mirror" only turns some over
    # A batch can hold no more than all the training images: then there is one step per epoch.
    batches = (f"batches of {args.batch_size}" if args.batch_size < n else
               f"one batch of all {n} images (--batch-size {args.batch_size} is not smaller)")
    return (f"training {'-'.join(map(str, sizes))} ({args.activation}) on {n} "
            f"{DATASETS[dataset]['title']} images, validating on {n_val}, {args.epochs} epochs of "
            f"{batches}, lr {args.lr:g} ({args.schedule}), momentum {args.momentum:g}, weight "
            f"decay {args.weight_decay:g}, dropout {args.dropout:g}, distortions {args.augment}"
            f"{distortions}" + (", centred inputs" if args.center else ""))


def say_where_saved(args, target, previous, meta, seconds):
    """The last line of `train`: where the model went, and what happened to the one there."""
    kept = f"kept {args.model} ({previous and saved_accuracy(previous) or 'no accuracy saved'})"
    if target.endswith(".worse.npz"):
        return (f"{kept}: this run's model is more than a point less accurate; saved it as "
                f"{target} (rename it to {args.model} to use it instead)")
    if target != args.model:
        why = ("it is better than this stopped run" if same_measure(meta, previous) else
               "its accuracy cannot be compared with this stopped run's")
        return f"{kept}: {why}; saved this one as {target}"
    replaced = (f", replacing a model of {saved_accuracy(previous) or 'unknown accuracy'}"
                if previous is not None else "")
    return f"saved {args.model}{replaced}  ({seconds:.1f} s in all)"


def add_train_command(add, shared):
    """`train`'s options: the ones most runs use first, then one group per part of the lesson.
    None has a default of its own: args holds only the flags given (train_settings fills in the
    rest from TRAIN_SETTINGS), and each help text shows MNIST's default."""
    D = TRAIN_SETTINGS["mnist"]
    p = add("train", "train a network on MNIST, report test accuracy and save it",
            shared.images, shared.data, shared.show)
    p.argument_default = argparse.SUPPRESS
    p.epilog = ("--dataset fashion brings its own defaults: "
                + " ".join(as_flag(name, value) for name, value in TRAIN_SETTINGS["fashion"].items())
                + "; --recipe best: "
                + " ".join(as_flag(name, value) for name, value in TRAIN_SETTINGS["best"].items()))
    p.add_argument("--model", metavar="FILE", default=None,
                   help=f"model file to save (default: {MODEL_FOR_DATASET['mnist']}, with --dataset "
                        f"fashion {MODEL_FOR_DATASET['fashion']}); a model there is replaced when "
                        f"training ends, unless it is more accurate on the test images: by more "
                        f"than a point (the new model is then saved beside it as NAME.worse.npz) "
                        f"or, after Ctrl-C, at all (NAME.interrupted.npz)")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="preset settings: `best` trains the most accurate network (minutes); "
                        "flags given as well override it")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw the loss and accuracy per epoch when training ends")
    network = p.add_argument_group("the network")
    network.add_argument("--hidden", type=layer_sizes, metavar="SIZES",
                         help=f"hidden layer sizes, e.g. 128 or 128,64 "
                              f"(default: {','.join(map(str, D['hidden']))})")
    network.add_argument("--activation", choices=list(ACTIVATIONS),
                         help=f"hidden-layer nonlinearity (default: {D['activation']})")
    steps = p.add_argument_group("the training loop")
    steps.add_argument("--epochs", type=positive_int, metavar="N",
                       help=f"passes over the training images (default: {D['epochs']})")
    steps.add_argument("--batch-size", type=positive_int, metavar="N",
                       help=f"images per gradient step (default: {D['batch_size']})")
    steps.add_argument("--lr", type=positive_float,
                       help=f"learning rate at the start (default: {D['lr']})")
    steps.add_argument("--momentum", type=fraction_below_one,
                       help=f"momentum, 0 for plain SGD (default: {D['momentum']})")
    steps.add_argument("--weight-decay", type=non_negative_float, metavar="L2",
                       help=f"L2 weight decay (default: {D['weight_decay']:g})")
    steps.add_argument("--schedule", choices=["cosine", "constant"],
                       help=f"learning-rate schedule (default: {D['schedule']})")
    steps.add_argument("--center", action=argparse.BooleanOptionalAction,
                       help="learn on images minus the mean training image, folded into the first "
                            "layer's biases when training ends (default: "
                            + as_flag("center", D["center"]) + ")")
    steps.add_argument("--val-size", type=non_negative_int, metavar="N",
                       help=f"training images held out to pick the best epoch (default: {D['val_size']})")
    steps.add_argument("--seed", type=non_negative_int,
                       help=f"random seed; the same seed and the same number of BLAS threads "
                            f"(OPENBLAS_NUM_THREADS) give the same model (default: {D['seed']})")
    generalise = p.add_argument_group("distortions and dropout")
    generalise.add_argument("--augment", choices=list(AUGMENT_PRESETS),
                            help=f"random distortions (shift, rotation, scale, shear, elastic) of the "
                                 f"training images every epoch, none to switch them off; mirror turns "
                                 f"half of them left to right instead, for clothes (default: {D['augment']})")
    generalise.add_argument("--distortions", type=non_negative_int, metavar="N",
                            help=f"how many different random distortions are drawn each epoch (rounded "
                                 f"up to a multiple of 256) and dealt out to the shuffled training "
                                 f"images; 0 draws one for every image, about half a second more per "
                                 f"epoch (default: {D['distortions']})")
    generalise.add_argument("--dropout", type=fraction_below_one, metavar="RATE",
                            help=f"fraction of hidden units dropped while training, 0 = off "
                                 f"(default: {D['dropout']:g})")
    p.set_defaults(run=command_train, paths={"data_dir": "data folder", "model": "model to write",
                                             "plot": "picture to write"})


def command_train(args):
    wall = time.perf_counter()
    dataset = with_dataset_defaults(args)
    settings = train_settings(args)
    previous = load_model(args.model)[2] if os.path.exists(args.model) else None  # checked
    X_train, y_train, X_test, y_test = load_dataset(args.data_dir, dataset=dataset)
    if args.val_size >= len(X_train):
        raise UserError(f"--val-size {args.val_size} leaves no training images "
                        f"(there are {len(X_train)}); use a smaller value")
    n = len(X_train) - args.val_size
    # The validation images are the last val_size of the training set: held out from
    # training, used to pick the best epoch. The test set is only looked at once, at the end.
    X_fit, y_fit = X_train[:n], y_train[:n]
    X_val, y_val = X_train[n:], y_train[n:]
    notice = busy_machine_notice()
    if notice:
        print(notice, flush=True)
    if previous is not None:
        print(f"note: {args.model} holds a model ({saved_accuracy(previous) or 'no accuracy saved'}); "
              f"this run replaces it unless it is clearly less accurate (--model NAME.npz keeps both)", flush=True)
    print(describe_training(args, n, len(X_val), dataset), flush=True)
    # train() raises FloatingPointError when the loss explodes or the network stops learning;
    # it is told here as one line. NumPy's overflow warnings on the way there are only noise.
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            Ws, bs, history, interrupted = train_full(
                X_fit, y_fit, X_val, y_val, hidden=args.hidden, activation=args.activation,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                weight_decay=args.weight_decay, schedule=args.schedule, dropout=args.dropout,
                augment=AUGMENT_PRESETS[args.augment] if args.augment != "none" else None,
                distortions=args.distortions, center=args.center, seed=args.seed,
                on_epoch=lambda e: print_epoch(e, args.epochs),
                on_progress=progress_printer(args.epochs))
        except FloatingPointError as e:
            raise UserError(f"{e}; try --lr {args.lr / 10:g} (the saved model is unchanged)") from None
    if interrupted:
        print("interrupted: saving the best model so far", file=sys.stderr)
    result = evaluate(X_test, y_test, Ws, bs, args.activation) if y_test is not None else None
    best_val = max((e["val_acc"] for e in history if e["val_acc"] is not None), default=None)
    elsewhere = ("hidden", "activation")  # saved as the layer sizes and the model's activation
    meta = {"activation": args.activation, "dataset": dataset,
            "classes": DATASETS[dataset]["classes"], "history": history,
            "settings": dict({k: v for k, v in settings.items() if k not in elsewhere},
                             recipe=args.recipe),
            "val_accuracy": best_val, "interrupted": interrupted,
            "typical_logit": typical_top_logit(X_val if len(X_val) else X_fit, Ws, bs, args.activation),
            "test_accuracy": result["accuracy"] if result else None,
            "test_loss": result["loss"] if result else None}
    target = where_to_save(args.model, meta, previous, interrupted)
    try:
        save_model(target, Ws, bs, meta)
    except OSError as e:
        raise UserError(f"--model {target}: cannot write ({e.strerror}); choose another path "
                        f"with --model") from None
    if result:
        print(f"test accuracy {100 * result['accuracy']:.2f} % (loss {result['loss']:.4f}) "
              f"on {result['n']} images")
    print(say_where_saved(args, target, previous, meta, time.perf_counter() - wall))
    if args.plot:
        print(f"wrote {plot_history(history, args.plot, args.show)}")
    return 0


def add_evaluate_command(add, shared):
    """`evaluate` and its options (add and shared: see build_parser)."""
    p = add("evaluate", "measure a saved model on the 10,000 test images", shared.saved_model,
            shared.data, shared.show)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw the confusion matrix as a heat map")
    p.add_argument("--errors", metavar="FILE.png",
                   help="draw the test digits the network got most confidently wrong")
    p.add_argument("--plot-history", metavar="FILE.png",
                   help="draw the loss and accuracy per epoch saved in the model")
    p.set_defaults(run=command_evaluate, paths={
        "data_dir": "data folder", "model": "model to read", "plot": "picture to write",
        "errors": "picture to write", "plot_history": "picture to write"})


def command_evaluate(args):
    Ws, bs, meta, dataset, class_names = load_model_and_dataset(args)
    activation = meta["activation"]
    if args.plot_history:
        if not meta.get("history"):
            raise UserError(f"{args.model} holds no training history to draw")
        print(f"wrote {plot_history(meta['history'], args.plot_history, args.show)}")
        if not (args.plot or args.errors or args.json):
            return 0
    _, _, X_test, y_test = load_dataset(args.data_dir, dataset=dataset)
    if y_test is None:
        raise UserError(f"the test images in {args.data_dir}/ have no labels, so there is "
                        f"nothing to score against; use the IDX files")
    result = evaluate(X_test, y_test, Ws, bs, activation)
    if args.json:
        print(json.dumps(dict(result, confusion=result["confusion"].tolist(), dataset=dataset)))
    else:
        print(f"test accuracy {100 * result['accuracy']:.2f} %, loss {result['loss']:.4f}, "
              f"on {result['n']} {DATASETS[dataset]['title']} images\n")
        print(format_confusion(result["confusion"], class_names))
    if args.plot:
        print(f"wrote {plot_confusion(result['confusion'], args.plot, args.show, class_names)}")
    if args.errors:
        P = predict_proba(X_test, Ws, bs, activation)
        worst = worst_errors(P, y_test, 24)
        path = plot_errors(X_test[worst], y_test[worst], P[worst].argmax(axis=1),
                           P[worst].max(axis=1), args.errors, show=args.show,
                           class_names=class_names)
        print(f"wrote {path}")
    return 0


def add_gradcheck_command(add, shared):
    """`gradcheck` and its options (add and shared: see build_parser)."""
    p = add("gradcheck", "compare the hand-written gradients with finite differences")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(run=command_gradcheck)


def command_gradcheck(args):
    worst = 0.0
    for activation in ("relu", "sigmoid", "tanh"):
        for dropout in (0.0, 0.5):
            errors = (gradient_check_with_dropout(activation=activation, rate=dropout, seed=args.seed)
                      if dropout else gradient_check(activation=activation, seed=args.seed))
            print(f"{activation:>7}, dropout {dropout:.1f}:  "
                  + "  ".join(f"{name} {err:.1e}" for name, err in errors))
            worst = max(worst, max(err for _, err in errors))
    ok = worst < 1e-6
    print(f"largest relative error {worst:.1e}: {'OK' if ok else 'FAILED'} (limit 1e-6)")
    return 0 if ok else 1


def as_flag(name, value):
    """How a setting is written on the command line: ('center', False) -> '--no-center'."""
    flag = flag_name(name)
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {','.join(map(str, value)) if isinstance(value, tuple) else value}"


def build_parser():
    """The command line: one command per task, its options written beside the function that
    runs it (add_predict_command beside command_predict, ...). Each option's type= refuses a bad
    value as it is read; each command declares in set_defaults the function that runs it (run)
    and which of its options name a file or folder, and how it uses them (paths: see the guard
    above). An add_..._command(add, shared) gets add(name, help_text, *parents), which makes the
    command's parser, and shared, the options several commands share (parents to list):
    shared.data (--data-dir), shared.images (--dataset), shared.saved_model (--dataset and
    --model of a saved model) and shared.show (--show)."""
    parser = OneLineParser(
        prog="mnist_from_scratch.py",
        description="A neural network for handwritten digits, from scratch in NumPy.",
        epilog="Start with `train`, then `predict your_digit.png`. "
               "`COMMAND --help` explains each command.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    def add(name, help_text, *parents):
        return commands.add_parser(name, help=help_text, description=help_text, parents=parents)

    # Options several commands share, each written once: a command lists them in parents.
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-dir", metavar="DIR",
                      help=f"folder with the data set's files (default: {DATASETS['mnist']['folder']} "
                           f"for MNIST, {DATASETS['fashion']['folder']} for Fashion-MNIST; "
                           f"downloaded there when missing)")
    the_images = "the images: mnist (handwritten digits) or fashion (Fashion-MNIST, clothes)"
    images = argparse.ArgumentParser(add_help=False)
    images.add_argument("--dataset", choices=list(DATASETS), default="mnist",
                        help=the_images + "; default: mnist")
    saved_model = argparse.ArgumentParser(add_help=False)
    saved_model.add_argument("--dataset", choices=list(DATASETS),
                             help=the_images + "; default: the one the model was trained on, "
                                               "which also picks the default --model")
    saved_model.add_argument("--model", metavar="FILE",
                             help=f"model file (default: {MODEL_FOR_DATASET['mnist']}, with "
                                  f"--dataset fashion {MODEL_FOR_DATASET['fashion']})")
    show = argparse.ArgumentParser(add_help=False)
    show.add_argument("--show", action="store_true",
                      help="also open the pictures in a window (when there is a display)")

    # The commands, each in the section that provides it, in the order of --help.
    shared = argparse.Namespace(data=data, images=images, saved_model=saved_model, show=show)
    add_train_command(add, shared)      # [17]
    add_evaluate_command(add, shared)   # [17]
    add_weights_command(add, shared)    # [12]
    add_samples_command(add, shared)    # [12]
    add_predict_command(add, shared)    # [11b]
    add_draw_command(add, shared)       # [13]
    add_serve_command(add, shared)      # [14]
    add_pictures_command(add, shared)   # [12]
    add_gradcheck_command(add, shared)  # [17]
    add_notebook_command(add, shared)   # [15]
    add_download_command(add, shared)   # [16]
    return parser


def parse_command_line(argv):
    """The command line read into args; the model file left out is filled in: each data set has
    its own (MODEL_FOR_DATASET)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
    elif getattr(args, "model", "") is None:
        args.model = MODEL_FOR_DATASET[getattr(args, "dataset", None) or "mnist"]
    return args


def main(argv=None):
    args = parse_command_line(sys.argv[1:] if argv is None else list(argv))
    if args.command is None:
        return 2
    try:
        check_declared_paths(args)  # every file and folder, before any work (see the guard above)
        status = args.run(args)
        # Output into a pipe is buffered until the end: a reader that has gone away (`| head`)
        # shows up at this flush, still inside the try, rather than at exit as a traceback.
        sys.stdout.flush()
        return status
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:  # e.g. --hidden 100000000: NumPy says how much it wanted
        print(f"error: not enough memory ({e or 'no size given'})\n"
              f"try a smaller --hidden or --batch-size", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}; the saved model was not changed", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The program reading the output has stopped (`predict photos/ | head`): stop quietly,
        # and point stdout at nothing so that Python's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # what no check could foresee: a full disk, a file removed meanwhile
        print(f"error: {os_error_text(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
