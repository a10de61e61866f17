"""The measurements behind docs/results.md: every figure on that page comes from a mode of this
script, and the page names the command beside the figure.

    python docs/measure.py --help                        # every mode and its arguments
    python docs/measure.py --measure-usps model.npz      # for instance: the USPS table

It runs from any folder: it finds the program, the test file and data/ one folder up from
itself, and the paths it is given (MODEL, OUT.png, USPS_FOLDER) are taken from the folder it
runs in, as any command's are. The images it measures on (phone photos, scans, mouse drawings,
strings of digits) are made by the test file's generators, so the tests and the measurements
see the same kinds of image. Nothing here is a test: a mode takes minutes (the full photo table
about 20).
"""

import contextlib
import gzip
import io
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, NamedTuple
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the program and the test file, from whatever folder this runs in

import numpy as np  # noqa: E402  (after the path above, like the two modules below)

import mnist_from_scratch as mnist  # noqa: E402
from mnist_from_scratch import image_to_mnist, read_image, write_atomically  # noqa: E402
from test_mnist_from_scratch import (DATA_DIR, HAVE_MNIST, NO_DIGIT_KINDS, ONE, SCRIPT,  # noqa: E402
                                     best_right_reading, cell_output, cell_text, densify, draw_on_page,
                                     drawn_canvas, encode, execute_notebook, http, make_image,
                                     missing_for_the_browser_test, missing_for_the_notebook_tests,
                                     page_is_settled, photograph, pictures_in, plain_recipe, prepare,
                                     present_number, real_mnist, run_cli, start_chromium,
                                     synthetic_no_digit, wait_for, with_reference_bodies, write_notebook)


# The synthetic photo table of docs/results.md (not a test: it takes about 20 minutes)
MEASURED_KINDS = ["photo", "scan", "mouse", "rgba white", "rgba black", "mnist 28x28", "photo on a table",
                  "photo's drawing alone"]


def measure_photos(model_path, per_kind=1000, no_digit_per_kind=200, kinds=MEASURED_KINDS):
    """Print, for each kind of synthetic image, the model's accuracy on clean 28x28 test digits and
    on the same digits turned into images and brought back by read_image -> image_to_mnist ("no
    digit found" counts as wrong); then how many no-digit images wrongly give a digit.

        python docs/measure.py --measure-photos [MODEL] [IMAGES_PER_KIND]
    """
    Ws, bs, meta = mnist.load_model(model_path)
    activation = meta.get("activation", "relu")
    _, _, X_test, labels = real_mnist()
    images = X_test.reshape(-1, 28, 28)
    print(f"model {model_path}: {meta['sizes']}, {100 * meta.get('test_accuracy', float('nan')):.2f} % on the test set")
    print("| kind of image | images | clean 28x28 | through predict | no digit found | seconds per image |")
    print("|---|---|---|---|---|---|")
    for kind in kinds:
        # Each kind its own random stream, so runs are comparable; the photo's drawing alone takes
        # the photo's stream: the very same digits, drawn the same, without the photo.
        stream = MEASURED_KINDS.index("photo" if kind == "photo's drawing alone" else kind)
        rng = np.random.default_rng(2024 + stream)
        chosen = rng.choice(len(images), per_kind, replace=False)
        prepared, none, start = [], 0, time.perf_counter()
        for index in chosen:
            x28 = prepare(make_image(kind, images[index], rng))
            none += x28 is None
            prepared.append(np.zeros((28, 28), np.float32) if x28 is None else x28)
        seconds = (time.perf_counter() - start) / per_kind  # making the image included
        clean = mnist.predict_proba(images[chosen].reshape(-1, 784), Ws, bs, activation).argmax(1)
        through = mnist.predict_proba(np.array(prepared).reshape(-1, 784), Ws, bs, activation).argmax(1)
        print(f"| {kind} | {per_kind} | {100 * (clean == labels[chosen]).mean():.1f} % "
              f"| {100 * (through == labels[chosen]).mean():.1f} % | {none} | {seconds:.2f} |", flush=True)
    print("\n| image without a digit | images | given a digit |")
    print("|---|---|---|")
    for number, kind in enumerate(NO_DIGIT_KINDS):
        rng = np.random.default_rng(4048 + number)
        found = sum(prepare(synthetic_no_digit(rng, kind)) is not None for _ in range(no_digit_per_kind))
        print(f"| {kind} | {no_digit_per_kind} | {found} |", flush=True)


def measure_large_photos(model_path, count=90, size_range=(1600, 4100)):
    """The synthetic photos of the photo table (photo, on a table, drawing alone), made 1600 to
    4100 pixels on a side, prepared two ways: read shrunk (read_image as it is) and read with
    every pixel, then shrunk by image_to_mnist. Prints the accuracy of each, how far apart their
    28x28 inputs are, and the seconds per image of each.

        python docs/measure.py --measure-large-photos [MODEL] [IMAGES]
    """
    Ws, bs, meta = mnist.load_model(model_path)
    _, _, X_test, labels = real_mnist()
    rng = np.random.default_rng(77)
    kinds = ["photo", "photo on a table", "photo's drawing alone"]
    right, seconds, differences = {"shrunk": [], "every pixel": []}, {"shrunk": 0.0, "every pixel": 0.0}, []
    for number, index in enumerate(rng.choice(len(X_test), count, replace=False)):
        data = make_image(kinds[number % 3], X_test[index].reshape(28, 28), rng, photo_size_range=size_range)
        inputs = {}
        for way, max_side in (("shrunk", 640), ("every pixel", None)):
            start = time.perf_counter()
            inputs[way], _ = image_to_mnist(*read_image(io.BytesIO(data), max_side=max_side))
            seconds[way] += time.perf_counter() - start
            digit = None if inputs[way] is None else int(
                mnist.predict_proba(inputs[way].reshape(1, 784), Ws, bs, meta["activation"])[0].argmax())
            right[way].append(digit == labels[index])
        if inputs["shrunk"] is not None and inputs["every pixel"] is not None:
            differences.append(float(np.abs(inputs["shrunk"] - inputs["every pixel"]).max()))
    print(f"{count} synthetic photos of {size_range[0]}-{size_range[1]} px ({', '.join(kinds)}): "
          + "; ".join(f"{way}: {100 * np.mean(right[way]):.1f} %, {seconds[way] / count:.2f} s per image"
                      for way in right)
          + f"; the 28x28 inputs differ by at most {max(differences):.3f} (median {np.median(differences):.3f})")


# The served page for the README, and the server under load for docs/results.md (not tests)
def start_serve_command(model_path):
    """`serve --port 0` in a child process, as a user starts it; returns (process, base URL)."""
    app = subprocess.Popen([sys.executable, SCRIPT, "serve", "--model", model_path, "--port", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = app.stdout.readline()
    if not line.startswith("serving on "):
        app.kill()
        raise SystemExit(f"serve did not start: {line.strip() or 'no output'}")
    return app, line.split()[2].rstrip("/")


def measure_serve(model_path, threads=8, requests_per_thread=100, distinct_images=200):
    """Load on one server: `threads` clients, each sending `requests_per_thread` real images one
    after the other (phone photos, scans, mouse drawings and 28x28 PNGs made from MNIST test
    digits, as in the photo table). Every answer must be the one read_image -> image_to_mnist ->
    predict_proba gives for the same bytes in this process; prints how many were, the true-digit
    accuracy, and the latency per request (p50, p99) as the clients saw it.

        python docs/measure.py --measure-serve [MODEL] [THREADS] [REQUESTS_PER_THREAD]
    """
    Ws, bs, meta = mnist.load_model(model_path)
    activation = meta.get("activation", "relu")
    _, _, X_test, labels = real_mnist()
    rng = np.random.default_rng(2025)
    kinds = ["photo", "scan", "mouse", "mnist 28x28"]
    images = []                                   # (bytes, content type, true digit, expected digit, P)
    for number, index in enumerate(rng.choice(len(X_test), distinct_images, replace=False)):
        body = make_image(kinds[number % len(kinds)], X_test[index].reshape(28, 28), rng)
        x28 = prepare(body)
        p = None if x28 is None else mnist.predict_proba(x28.reshape(1, 784), Ws, bs, activation)[0]
        images.append((body, "image/jpeg" if body[:3] == b"\xff\xd8\xff" else "image/png", int(labels[index]),
                       None if p is None else int(p.argmax()), p))
    load_before = os.getloadavg()[0]
    app, url = start_serve_command(model_path)
    latencies, right, true_digit, failures = [], [], [], []
    lock = threading.Lock()

    def client(number):
        for request in range(requests_per_thread):
            body, content_type, label, digit, p = images[(number * requests_per_thread + request) % len(images)]
            start = time.perf_counter()
            try:
                status, _, answer = http("POST", url + "/predict", body, content_type, timeout=120)
            except Exception as error:             # a lost request: counted, never hidden
                with lock:
                    failures.append(f"{type(error).__name__}: {error}")
                continue
            seconds = time.perf_counter() - start
            same = status == 200 and answer["digit"] == digit and (
                p is None or np.abs(np.array(answer["probabilities"]) - p).max() < 1e-5)
            with lock:
                latencies.append(seconds)
                right.append(same)
                true_digit.append(answer.get("digit") == label)
    try:
        start = time.perf_counter()
        workers = [threading.Thread(target=client, args=(number,)) for number in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - start
    finally:
        app.terminate()
        app.wait(20)
    sent = threads * requests_per_thread
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (math.nan, math.nan)
    print(f"model {model_path}: {meta['sizes']}; {os.cpu_count()} CPU cores; load average before: "
          f"{load_before:.1f}, after: {os.getloadavg()[0]:.1f}")
    print(f"{threads} threads x {requests_per_thread} requests = {sent} sent, {len(latencies)} answered, "
          f"{sum(right)} answered right (the answer predict gives), {len(failures)} lost"
          + (f" ({failures[0]})" if failures else ""))
    print(f"the true digit: {sum(true_digit)} of {len(true_digit)}; images: {len(images)} distinct "
          f"({', '.join(kinds)}), {sum(len(image[0]) for image in images) // len(images) // 1024} kB on average")
    print(f"latency per request p50 {p50:.0f} ms, p99 {p99:.0f} ms; {sent / wall:.1f} requests/s; {wall:.1f} s in all")
    return sum(right) == sent


def process_status(pid, field):
    """A number from /proc/PID/status (Linux): VmHWM (peak memory, kB), VmRSS, Threads."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/{pid}/status (this measure needs Linux)")


def rgba_png(width, height):
    """A width x height RGBA PNG, opaque black with a white bar: small to send, large decoded."""
    from PIL import Image
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[..., 3] = 255
    pixels[height * 2 // 5:height * 3 // 5, width * 12 // 25:width * 13 // 25, :3] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def measure_serve_memory(model_path, side=5000, at_once=2):
    """Peak memory of `serve` answering `at_once` RGBA PNGs of side x side pixels (25 megapixels,
    the limit) sent together, and how long a drawing sent meanwhile waited.

        python docs/measure.py --measure-serve-memory [MODEL] [SIDE] [AT_ONCE]
    """
    from PIL import Image
    png, drawing = rgba_png(side, side), encode(drawn_canvas(ONE), "L", "PNG")
    whole = io.BytesIO()
    Image.new("L", (side, side), 128).save(whole, "JPEG")
    whole = whole.getvalue()
    claim = whole[:whole.index(b"\xff\xda") + 16] + b"\xff\xd9"   # its header, a scrap of data: truncated
    app, url = start_serve_command(model_path)
    try:
        http("GET", url + "/health")
        idle_kb = process_status(app.pid, "VmHWM")
        start = time.perf_counter()
        claim_status = http("POST", url + "/predict", claim, "image/jpeg")[0]
        claim_seconds, claim_kb = time.perf_counter() - start, process_status(app.pid, "VmHWM")
        answers, seconds = [], {}

        def send(name, body):
            start = time.perf_counter()
            answers.append((name, http("POST", url + "/predict", body, "image/png", timeout=300)[:3:2]))
            seconds[name] = time.perf_counter() - start
        start = time.perf_counter()
        senders = [threading.Thread(target=send, args=(f"large {k}", png)) for k in range(at_once)]
        for sender in senders:
            sender.start()
        time.sleep(0.2)
        send("drawing", drawing)
        for sender in senders:
            sender.join()
        wall = time.perf_counter() - start
        peak_kb = process_status(app.pid, "VmHWM")
    finally:
        app.terminate()
        app.wait(20)
    print(f"a {len(claim)}-byte JPEG whose header claims {side}x{side}: {claim_status} in {1000 * claim_seconds:.0f} ms, "
          f"peak memory of serve {claim_kb / 1024:.0f} MB")
    print(f"{at_once} RGBA PNGs of {side}x{side} ({len(png) // 1024} kB each) at once: peak memory of serve "
          f"{peak_kb / 1024:.0f} MB ({idle_kb / 1024:.0f} MB after start); all answered in {wall:.1f} s; "
          f"a drawing sent meanwhile: {1000 * seconds['drawing']:.0f} ms")
    for name, (status, answer) in sorted(answers):
        print(f"  {name}: {status} {answer.get('digit', answer)}")


def measure_predict_photo(model_path, width=4000, height=3000, repeats=5):
    """Peak memory and time of `predict` on a width x height phone-like JPEG (12 megapixels),
    written into a temporary folder: the whole command, and read_image + predict_image inside
    one process (the median of `repeats`).

        python docs/measure.py --measure-predict-photo [MODEL] [WIDTH] [HEIGHT]
    """
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(12)
    photo = Image.new("RGB", (width, height), (200, 195, 185))
    ImageDraw.Draw(photo).line([(width * 0.45, height * 0.3), (width * 0.55, height * 0.3), (width * 0.47, height * 0.7)],
                               fill=(30, 30, 40), width=max(4, width // 60))
    noisy = np.asarray(photo).astype(np.int16) + rng.integers(-8, 8, (height, width, 1)).astype(np.int16)
    Ws, bs, meta = mnist.load_model(model_path)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "7_photo.jpg")
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=92)
        del photo, noisy
        # The command, and at its end its own peak memory (VmHWM: of this program alone, not of
        # the process it was started from).
        report_peak = ("import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], "
                       "run_name='__main__')\nfinally:\n    print([line for line in open('/proc/self/status') "
                       "if line.startswith('VmHWM')][0].split()[1], file=sys.stderr)")
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", report_peak, SCRIPT, "predict", "--model", model_path, path],
                             capture_output=True, text=True)
        command_seconds = time.perf_counter() - start
        peak_kb = int(run.stderr.split()[-1])
        inside = []
        for _ in range(repeats):
            start = time.perf_counter()
            mnist.predict_image(*read_image(path), Ws, bs, meta["activation"])
            inside.append(time.perf_counter() - start)
        print(f"predict on a {width}x{height} JPEG ({os.path.getsize(path) // 1024} kB): peak memory "
              f"{peak_kb / 1024:.0f} MB, {command_seconds:.2f} s for the whole command (Python, NumPy, Pillow "
              f"and the model loaded included); read_image + predict_image: {np.median(inside):.2f} s "
              f"(median of {repeats}); it says: {run.stdout.splitlines()[0] if run.stdout else run.stderr.strip()}")


def measure_slow_clients(model_path, clients=200, seconds_between_bytes=1.0):
    """`clients` connections to `serve` each sending its request a byte at a time, while a fresh
    client asks GET /health every half second: when each slow client was dropped, the slowest
    /health answer, and the most threads the server had.

        python docs/measure.py --measure-slow-clients [MODEL] [CLIENTS]
    """
    import socket
    app, url = start_serve_command(model_path)
    port = int(url.rsplit(":", 1)[1])
    request = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n" + b"X-Pad: a\r\n" * 200
    health, threads, dropped = [], [], {}
    stop = threading.Event()

    def ask_health():
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status = http("GET", url + "/health", timeout=10)[0]
            except Exception as error:
                status = type(error).__name__
            health.append((time.perf_counter() - start, status))
            threads.append(process_status(app.pid, "Threads"))
            stop.wait(0.5)
    try:
        start = time.monotonic()
        slow = {}
        for number in range(clients):
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.setblocking(False)
            slow[number] = connection
        prober = threading.Thread(target=ask_health)
        prober.start()
        sent = 0
        limit = mnist.SECONDS_TO_SEND_A_REQUEST + 15          # the loop stops by itself
        while slow and time.monotonic() - start < limit and sent < len(request):
            for number, connection in list(slow.items()):
                try:
                    if connection.recv(4096) is not None:     # an answer (408) or the end: dropped
                        dropped[number] = time.monotonic() - start
                        connection.close()
                        del slow[number]
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    dropped[number] = time.monotonic() - start
                    connection.close()
                    del slow[number]
                    continue
                try:
                    connection.send(request[sent:sent + 1])
                except OSError:
                    pass
            sent += 1
            time.sleep(seconds_between_bytes)
        for connection in slow.values():
            connection.close()
        stop.set()
        prober.join()
    finally:
        stop.set()
        app.terminate()
        app.wait(20)
    statuses = sorted({str(status) for _, status in health})
    print(f"{clients} clients sending a byte every {seconds_between_bytes:g} s: {len(dropped)} dropped by the server, "
          f"the last after {max(dropped.values(), default=float('nan')):.1f} s (deadline "
          f"{mnist.SECONDS_TO_SEND_A_REQUEST} s, cap {mnist.MAX_CONNECTIONS} connections), {len(slow)} still open")
    print(f"GET /health from a fresh client, {len(health)} times: answers {', '.join(statuses)}; slowest "
          f"{1000 * max(seconds for seconds, _ in health):.0f} ms; the server's threads at most {max(threads)}")


THREE = [[(140 + 55 * np.cos(a), 88 - 48 * np.sin(a)) for a in np.radians(np.arange(160, -95, -10))]
         + [(140 + 62 * np.cos(a), 192 - 58 * np.sin(a)) for a in np.radians(np.arange(90, -165, -10))]]


def serve_screenshot(model_path, out="docs/serve.png"):
    """The README's picture of the served page: a 3 drawn with the mouse in headless Chromium.

        python docs/measure.py --serve-screenshot [MODEL] [OUT.png]
    """
    from PIL import Image
    missing = missing_for_the_browser_test()
    if missing:
        raise SystemExit("needs " + ", ".join(missing))
    app, url = start_serve_command(model_path)
    with tempfile.TemporaryDirectory() as folder:
        driver = start_chromium(os.path.join(folder, "profile"))
        try:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 800, "height": 510, "deviceScaleFactor": 1, "mobile": False})
            driver.get(url + "/")
            draw_on_page(driver, [densify(THREE[0], 6)])
            if not wait_for(lambda: page_is_settled(driver), 60):
                raise SystemExit("the page did not settle")
            shot = os.path.join(folder, "page.png")
            driver.save_screenshot(shot)
            print("the page says:", driver.execute_script(
                "return document.getElementById('digit').textContent + ', ' + "
                "document.getElementById('message').textContent"))
        finally:
            driver.quit()
            app.terminate()
            app.wait(20)
        # 64 colours are plenty for a page of flat colours, and keep the file small
        picture = Image.open(shot).convert("RGB").quantize(64)
        write_atomically(out, lambda f: picture.save(f, format="PNG", optimize=True))
    print(f"wrote {out} ({os.path.getsize(out) // 1024} kB)")


# The USPS table of the README: real handwriting from outside MNIST (not a test: minutes)
# The 7,291 USPS training digits, zip.train.gz as distributed with the book The Elements of
# Statistical Learning, in data/usps/ (or the folder the environment variable USPS_DIR names).
USPS_DIR = os.environ.get("USPS_DIR", os.path.join(DATA_DIR, "usps"))


# How a user might hand a USPS digit to predict: (enlargement, black on white?, margin per side
# at 16 px). 16x16 and 4x enlarged (64x64), both polarities, tightly cropped as USPS is, and with
# a margin of half the digit's side (32 px around a 64 px digit, 8 px around a 16 px one).
USPS_PRESENTATIONS = [(scale, black, margin) for scale in (1, 4) for black in (True, False) for margin in (0, 8)]


def load_usps(folder=USPS_DIR):
    """The USPS digits (see the README beside zip.train.gz): images (n, 16, 16) float32 with ink 1
    and background 0, and labels (n,)."""
    path = os.path.join(folder, "zip.train.gz")
    with gzip.open(path, "rt") as file:
        rows = np.loadtxt(file, dtype=np.float32)
    return (rows[:, 1:].reshape(-1, 16, 16) + 1) / 2, rows[:, 0].astype(int)


def presentation_name(scale, black_on_white, margin):
    side = 16 * scale
    return (f"{side}x{side}, {'black on white' if black_on_white else 'white on black'}, "
            + (f"margin {margin * scale} px" if margin else "tight"))


def present_digit(ink, scale, black_on_white, margin):
    """PNG bytes of one digit (ink 1 on background 0) as a user might give it: with `margin`
    pixels of background around it, enlarged smoothly `scale` times, in either polarity."""
    from PIL import Image

    ink = np.pad(ink.astype(np.float32), margin)
    if scale > 1:
        side = ink.shape[0] * scale
        ink = np.asarray(Image.fromarray(ink, "F").resize((side, side), Image.BICUBIC))
    ink = np.clip(ink, 0.0, 1.0)
    return encode(1.0 - ink if black_on_white else ink, "L", "PNG")


def through_files(images, folder):
    """Write each image's bytes into `folder` and prepare it as predict does: read_image ->
    image_to_mnist. Returns ((n, 784) inputs, zeros where no digit was found; n no-digit flags)."""
    prepared, refused = [], []
    for number, data in enumerate(images):
        path = os.path.join(folder, f"{number}.png")
        with open(path, "wb") as file:
            file.write(data)
        x28, _ = image_to_mnist(*read_image(path))
        refused.append(x28 is None)
        prepared.append(np.zeros((28, 28), np.float32) if x28 is None else x28)
    return np.array(prepared).reshape(-1, 784), np.array(refused)


def measure_usps(model_paths, count=None, folder=USPS_DIR):
    """Print the accuracy of each model on USPS digits given to predict in every presentation
    (written as PNG files into a temporary folder; "no digit found" counts as wrong), beside the
    plain MNIST recipe on the same digits with the same model.

        python docs/measure.py --measure-usps MODEL [MODEL ...] [DIGITS] [USPS_FOLDER]
    """
    models = [mnist.load_model(path) for path in model_paths]
    images, labels = load_usps(folder)
    if count and count < len(labels):  # a fixed, evenly spread subset: runs stay comparable
        chosen = np.random.default_rng(0).choice(len(labels), count, replace=False)
        images, labels = images[chosen], labels[chosen]

    def accuracy(X, model):
        Ws, bs, meta = model
        return 100 * (mnist.predict_proba(X, Ws, bs, meta.get("activation", "relu")).argmax(1) == labels).mean()

    plain = np.array([plain_recipe(ink) for ink in images]).reshape(-1, 784)
    header = " | ".join(f"{os.path.basename(path)}: plain recipe | through predict" for path in model_paths)
    print(f"USPS: {len(labels)} digits; models: "
          + "; ".join(f"{path} {100 * meta.get('test_accuracy', float('nan')):.2f} % on MNIST's test set"
                      for path, (_, _, meta) in zip(model_paths, models)))
    print(f"| presentation | {header} | no digit found | seconds per image |")
    print("|---|" + "---|---|" * len(models) + "---|---|")
    with tempfile.TemporaryDirectory() as temporary:
        for presentation in USPS_PRESENTATIONS:
            start = time.perf_counter()
            X, refused = through_files([present_digit(ink, *presentation) for ink in images], temporary)
            seconds = (time.perf_counter() - start) / len(labels)
            cells = " | ".join(f"{accuracy(plain, model):.1f} % | {accuracy(X, model):.1f} %" for model in models)
            print(f"| {presentation_name(*presentation)} | {cells} | {refused.sum()} | {seconds:.3f} |", flush=True)


# What taking out one step of section [11] means: the step replaced by one that finds nothing.
ABLATIONS = {
    "local background (uneven light)": ("estimate_background", lambda paper, *a, **k: np.full(
        paper.shape, np.percentile(paper, 90), np.float32)),
    "polarity check (the border alone)": ("decide_polarity", lambda gray: bool(np.median(np.concatenate(
        [gray[0], gray[-1], gray[:, 0], gray[:, -1]])) > 0.5)),
    "table around the page": ("outside_the_page", lambda paper, *a, **k: np.zeros(paper.shape, bool)),
    "narrow strips of table": ("narrow_strips_along_the_edge", lambda mask, *a, **k: np.zeros_like(mask)),
    "printed lines": ("remove_grid_lines", lambda mask, *a, **k: (mask, np.zeros_like(mask))),
    "strokes along printed lines": ("strokes_on_lines", lambda smooth, digit, lines, sigma: np.zeros_like(lines)),
    "specks (keep the digit's pieces)": ("keep_digit_components", lambda mask, ink, *a, **k: mask.copy()),
    "stroke width": ("normalise_stroke_width", lambda cropped, *a, **k: cropped),
}


def measure_ablation(model_path, digits=60, photos_per_kind=25, no_digit_per_kind=20, only=None,
                     usps_folder=USPS_DIR):
    """Print what each photo step of section [11] is worth: the accuracy through image_to_mnist
    with all steps, and with each step taken out in turn, on USPS digits (both polarities
    together), on each kind of synthetic photo, and the count of no-digit images given a digit.

        python docs/measure.py --measure-usps MODEL [DIGITS [PHOTOS [NO_DIGIT]]] --ablation
    """
    Ws, bs, meta = mnist.load_model(model_path)
    activation = meta.get("activation", "relu")
    usps_images, usps_labels = load_usps(usps_folder)
    chosen = np.random.default_rng(0).choice(len(usps_labels), digits, replace=False)
    columns = []  # (name, list of image bytes, labels or None for no-digit images)
    for size, margin in ((1, 0), (1, 8), (4, 0), (4, 8)):
        data = [present_digit(usps_images[i], size, black, margin) for black in (True, False) for i in chosen]
        columns.append((f"USPS {16 * size} px {'margin' if margin else 'tight'}", data,
                        np.tile(usps_labels[chosen], 2)))
    _, _, X_test, labels = real_mnist()
    images = X_test.reshape(-1, 28, 28)
    for kind in MEASURED_KINDS:  # the streams of measure_photos: the first images of its table
        rng = np.random.default_rng(2024 + MEASURED_KINDS.index("photo" if kind == "photo's drawing alone" else kind))
        picked = rng.choice(len(images), photos_per_kind, replace=False)
        columns.append((kind, [make_image(kind, images[i], rng) for i in picked], labels[picked]))
    no_digit = []
    for number, kind in enumerate(NO_DIGIT_KINDS):
        rng = np.random.default_rng(4048 + number)
        no_digit += [synthetic_no_digit(rng, kind) for _ in range(no_digit_per_kind)]
    columns.append((f"no-digit images given a digit (of {len(no_digit)})", no_digit, None))

    print(f"model {model_path}; USPS: {digits} digits x 2 polarities per column; photos: {photos_per_kind} per kind")
    print("| taken out | " + " | ".join(name for name, _, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    variants = [("nothing (all steps)", None)] + list(ABLATIONS.items())
    for name, replacement in variants:
        if only is not None and name not in only:  # a part of the table, to share it among processes
            continue
        patch = mock.patch.object(mnist, *replacement) if replacement else contextlib.nullcontext()
        cells = []
        with patch:
            for _, data, truth in columns:
                prepared = [prepare(item) for item in data]
                if truth is None:
                    cells.append(str(sum(x is not None for x in prepared)))
                    continue
                X = np.array([np.zeros((28, 28), np.float32) if x is None else x for x in prepared])
                predicted = mnist.predict_proba(X.reshape(-1, 784), Ws, bs, activation).argmax(1)
                cells.append(f"{100 * (predicted == truth).mean():.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


# One training epoch beside PyTorch's, for docs/results.md (not a test: minutes)
# (hidden layers, batch size): the from-scratch tutorials' two networks, then the default's width.
SPEED_NETWORKS = [((128,), 64), ((128, 64), 64), ((512, 256), 128)]


def blas_threads():
    """The number of threads NumPy's BLAS starts: what OPENBLAS_NUM_THREADS (or OMP_NUM_THREADS)
    says, else one per core. PyTorch is given as many, so both sides use the same cores."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return os.cpu_count() or 1


def epoch_seconds_of_this_file(hidden, batch_size, epochs, seed, lr=0.05, momentum=0.9):
    """Seconds per epoch of `train` run as a user runs it, with the work PyTorch's side does too:
    no distortions, no centring, no validation, a constant learning rate, no weight decay. The
    times are read from the model's history: the training pass of each epoch alone."""
    with tempfile.TemporaryDirectory() as folder:
        model = os.path.join(folder, "speed.npz")
        code, out, err = run_cli("train", "--data-dir", DATA_DIR, "--model", model, "--epochs", str(epochs),
                                 "--hidden", ",".join(map(str, hidden)), "--batch-size", str(batch_size),
                                 "--lr", str(lr), "--momentum", str(momentum), "--weight-decay", "0",
                                 "--schedule", "constant", "--augment", "none", "--no-center",
                                 "--val-size", "0", "--seed", str(seed))
        if code != 0:
            raise SystemExit(f"train failed:\n{out}{err}")
        return [entry["seconds"] for entry in mnist.load_model(model)[2]["history"]]


def epoch_seconds_of_pytorch(torch, X, y, hidden, batch_size, epochs, seed, lr=0.05, momentum=0.9):
    """The same network and optimizer in PyTorch: Linear layers with ReLU between them, softmax
    cross-entropy, SGD with momentum; each epoch a fresh random order and every mini-batch step."""
    torch.manual_seed(seed)
    sizes = [784, *hidden, 10]
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    network = torch.nn.Sequential(*layers[:-1])  # no ReLU after the output layer
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=momentum)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(X))
        for first in range(0, len(X), batch_size):
            rows = order[first:first + batch_size]
            loss = torch.nn.functional.cross_entropy(network(X[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_speed(epochs=2, repeats=3):
    """Print, for each network of SPEED_NETWORKS, the seconds of one training epoch of this file
    and of PyTorch on the same 60,000 MNIST training images (data/), the same cores and the same
    settings, and their ratio (below 1: this file is faster). The two sides take turns, `repeats`
    times `epochs` epochs each, so that a machine whose speed drifts slows both alike; the figure
    is each side's fastest epoch. Without PyTorch, this file's epochs alone.

        python docs/measure.py --measure-speed [EPOCHS [REPEATS]]
    """
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch is not installed, so only this file's epochs are timed; for the comparison:\n"
              "  pip install torch==2.13.0      # the CPU build, for this measurement only", flush=True)
    threads = blas_threads()
    print(f"{threads} BLAS thread(s) on {os.cpu_count()} cores; {repeats} x {epochs} epochs per side, "
          f"taking turns; the fastest epoch of each side", flush=True)
    if torch is not None:
        torch.set_num_threads(threads)
        X_train, y_train, _, _ = mnist.load_mnist(DATA_DIR)
        X = torch.from_numpy(X_train)  # all 60,000, as train learns from with --val-size 0
        y = torch.from_numpy(y_train.astype(np.int64))
        print(f"PyTorch {torch.__version__}", flush=True)
    print("| network | batch | this file, s/epoch | PyTorch, s/epoch | ratio |\n|---|---|---|---|---|",
          flush=True)
    for hidden, batch_size in SPEED_NETWORKS:
        ours, theirs = [], []
        for repeat in range(repeats):
            ours += epoch_seconds_of_this_file(hidden, batch_size, epochs, seed=repeat)
            if torch is not None:
                theirs += epoch_seconds_of_pytorch(torch, X, y, hidden, batch_size, epochs, seed=repeat)
        name = "-".join(map(str, [784, *hidden, 10]))
        if theirs:
            print(f"| {name} | {batch_size} | {min(ours):.3f} | {min(theirs):.3f} | "
                  f"{min(ours) / min(theirs):.2f} |", flush=True)
        else:
            print(f"| {name} | {batch_size} | {min(ours):.3f} | - | - |", flush=True)


# The notebooks: how long each takes in a Jupyter kernel, and what is in it
def measure_notebooks(runs=3):
    """Write both notebooks, run each `runs` times in a fresh kernel (the exercises as written
    and with the reference bodies put in), and print their seconds, cells and pictures."""
    lesson, exercises = write_notebook(), write_notebook("--exercises")
    for name, notebook, allow_errors in (("lesson", lesson, False),
                                         ("exercises as written", exercises, True),
                                         ("exercises, reference bodies", with_reference_bodies(exercises, lesson), False)):
        seconds = []
        for _ in range(runs):
            executed, _, took = execute_notebook(notebook, allow_errors=allow_errors)
            seconds.append(took)
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        folded = [c for c in code if c["metadata"].get("jupyter", {}).get("source_hidden")]
        shown = [len(cell_text(c).split("\n")) for c in code if c not in folded]
        accuracy = re.search(r"test accuracy ([\d.]+ %)", "".join(map(cell_output, executed["cells"])))
        print(f"{name}: test accuracy {accuracy.group(1) if accuracy else '-'}; "
              f"{len(notebook['cells'])} cells ({len(code)} code, {len(folded)} of them "
              f"folded, {len(notebook['cells']) - len(code)} markdown); code cells shown: median "
              f"{sorted(shown)[len(shown) // 2]} lines, longest {max(shown)}; "
              f"{pictures_in(executed)} pictures; seconds in a kernel, {runs} runs: "
              f"{', '.join(f'{s:.1f}' for s in seconds)} (median {sorted(seconds)[runs // 2]:.1f})")


# The number table of docs/results.md: strings of real handwritten digits (not a test: minutes)
NUMBER_PRESENTATIONS = {"p16 black": "16 px, black on white", "p16 white": "16 px, white on black",
                        "p64 black": "64 px, black on white", "p64 white": "64 px, white on black",
                        "photo": "photo of paper (lines, uneven light, JPEG)",
                        "mouse": "drawn with the mouse (the drawing pad's pen)"}
# rule 4's score was fitted on these (fit_number_score); the drawings only measure it
FITTED_PRESENTATIONS = ("p16 black", "p16 white", "p64 black", "p64 white", "photo")


def read_number_bytes(data, Ws, bs, activation, alone=False, typical=None, sure=None):
    """bytes -> read_image -> predict_number: the number as predict reads it ('' for none);
    alone=True: also the digit predict_image reads in the same image (None for none).
    typical: the model's typical top logit (meta["typical_logit"]). sure: a list that receives each digit's probability, in reading order."""
    x28, P, steps = mnist.predict_number(*read_image(io.BytesIO(data)), Ws, bs, activation,
                                         typical=typical)
    number = "" if x28 is None else steps["number"]
    if sure is not None:
        sure += [float(d["probabilities"].max()) for d in steps.get("digits", [])]
    if not alone:
        return number
    one = None if x28 is None else int(mnist.predict_proba(steps["x28"].reshape(1, 784), Ws, bs, activation).argmax())
    return number, one


def measure_numbers(model_path, strings=300, singles=1000, folder=USPS_DIR):
    """Print how well predict reads numbers: strings of 2-8 USPS digits (and of MNIST test digits)
    in every presentation, with a third of the gaps or more touching; digits right (digits in all
    minus the edit distance between the true and the read string), numbers exactly right, and
    touching pairs (2 digits, gap -2 to 0 px) read right. Then how often a single digit is read
    as several: USPS digits (`singles` of them, every presentation of --measure-usps) and the
    photo kinds of --measure-photos (`singles` // 5 per kind).

        python docs/measure.py --measure-numbers MODEL [STRINGS [SINGLES]] [USPS_FOLDER]
    """
    Ws, bs, meta = mnist.load_model(model_path)
    activation = meta.get("activation", "relu")
    typical = meta.get("typical_logit")
    usps_images, usps_labels = load_usps(folder)
    sources = {"USPS": (usps_images, usps_labels)}
    if HAVE_MNIST:
        _, _, X_test, test_labels = real_mnist()
        sources["MNIST test"] = (X_test.reshape(-1, 28, 28), test_labels)
    print(f"model {model_path}: {meta['sizes']}; {strings} strings of 2-8 digits and {strings // 3} "
          f"touching pairs per row")
    print("| digits | presentation | digits right | numbers right | numbers with touching digits right "
          "| touching pairs alone right | seconds per number |")
    print("|---|---|---|---|---|---|---|")
    unsure = {True: [], False: []}  # USPS digits of strings read with as many digits: misread? -> below UNSURE
    for source_number, (source, (images, labels)) in enumerate(sources.items()):
        for presentation_number, (how, name) in enumerate(NUMBER_PRESENTATIONS.items()):
            rng = np.random.default_rng(7000 + 10 * source_number + presentation_number)
            right_digits = total_digits = right_numbers = right_pairs = touching = right_touching = 0
            start = time.perf_counter()
            for number in range(strings + strings // 3):
                pair = number >= strings
                chosen = rng.choice(len(labels), 2 if pair else int(rng.integers(2, 9)), replace=False)
                gaps = [int(rng.integers(-2, 1))] if pair else mnist.random_gaps(len(chosen) - 1, rng)
                strip, _ = mnist.number_strip([mnist.glyph_of(images[i]) for i in chosen], gaps, rng)
                truth = "".join(str(int(labels[i])) for i in chosen)
                sure = []
                read = read_number_bytes(present_number(strip, rng, how), Ws, bs, activation, typical=typical,
                                         sure=sure)
                if source == "USPS" and not pair and len(read) == len(truth) == len(sure):
                    for read_digit, true_digit, p in zip(read, truth, sure):
                        unsure[read_digit != true_digit].append(p < mnist.UNSURE)
                if pair:
                    right_pairs += read == truth
                else:
                    total_digits += len(truth)
                    right_digits += len(truth) - mnist.edit_distance(truth, read)
                    right_numbers += read == truth
                    touching += min(gaps) <= 0
                    right_touching += min(gaps) <= 0 and read == truth
            seconds = (time.perf_counter() - start) / (strings + strings // 3)
            print(f"| {source} | {name} | {100 * right_digits / total_digits:.1f} % "
                  f"| {100 * right_numbers / strings:.1f} % | {100 * right_touching / max(1, touching):.1f} % of {touching} "
                  f"| {100 * right_pairs / max(1, strings // 3):.1f} % "
                  f"| {seconds:.3f} |", flush=True)

    print(f"\nUNSURE ({100 * mnist.UNSURE:g} %), on the USPS strings read with as many digits as they have: "
          f"{100 * np.mean(unsure[True]):.0f} % of the {len(unsure[True])} misread digits and "
          f"{100 * np.mean(unsure[False]):.1f} % of the {len(unsure[False])} right ones are marked")
    print("\n| single digits | images | read as several digits | right, read as a number (predict) "
          "| right, read as one digit (predict_image) |")
    print("|---|---|---|---|---|")

    def singles_row(name, images_and_truths):
        several = right = right_alone = 0
        for data, truth in images_and_truths:
            number, one = read_number_bytes(data, Ws, bs, activation, alone=True, typical=typical)
            several += len(number) > 1
            right += number == str(truth)
            right_alone += one == truth
        n = len(images_and_truths)
        print(f"| {name} | {n} | {several} | {100 * right / n:.1f} % | {100 * right_alone / n:.1f} % |", flush=True)
    chosen = np.random.default_rng(0).choice(len(usps_labels), min(singles, len(usps_labels)), replace=False)
    for presentation in USPS_PRESENTATIONS:
        singles_row(f"USPS {presentation_name(*presentation)}",
                    [(present_digit(usps_images[i], *presentation), int(usps_labels[i])) for i in chosen])
    if HAVE_MNIST:
        for kind in MEASURED_KINDS:  # the streams of measure_photos: the first images of its table
            rng = np.random.default_rng(2024 + MEASURED_KINDS.index("photo" if kind == "photo's drawing alone" else kind))
            picked = rng.choice(len(test_labels), singles // 5, replace=False)
            singles_row(kind, [(make_image(kind, X_test[i].reshape(28, 28), rng), int(test_labels[i])) for i in picked])
    given = 0
    for number, kind in enumerate(NO_DIGIT_KINDS):  # the streams of measure_photos
        rng = np.random.default_rng(4048 + number)
        given += sum(read_number_bytes(synthetic_no_digit(rng, kind), Ws, bs, activation, typical=typical) != ""
                     for _ in range(singles // 5))
    print(f"\nimages without a digit given a number or digit by predict: {given} of {len(NO_DIGIT_KINDS) * (singles // 5)}")


# What taking out one rule of section [11b] means: the rule given a number that makes it do nothing.
def without_score(*names):
    """Rule 5's score with the features `names` weighing nothing."""
    return {"score_weights": {**mnist.NUMBER_RULES["score_weights"], **{name: 0.0 for name in names}}}


NUMBER_ABLATIONS = {
    "specks (1)": {"speck_share": 0.0},
    "a piece alone at its height, close to a row, is part of it (2)": {"stack_gap": -np.inf},
    "pieces above one another are one digit (3)": {"x_overlap": np.inf},
    "a short piece beside a digit is its stroke (3)": {"stroke_gap": -np.inf},
    "a short piece on its own must be big enough (3)": {"smallest_digit": 0.0},
    "touching digits are cut (5)": {"split_from": np.inf, "lone_from": np.inf},
    "digits far from the others are left out (4)": {"chain_gap": np.inf, "chain_rows": np.inf},
    "score: how strongly the network answers (5)": without_score("recognised"),
    "score: how sure it is (5)": without_score("sure"),
    "score: too wide, too thin (5)": without_score("too_wide", "too_thin"),
    "score: ink filling the row's height (5)": without_score("tall"),
    "score: ink cut through (5)": without_score("cut_ink"),
    "a piece alone is cut only by a margin (5)": {"lone_margin": 0.0},
}


def measure_number_ablation(model_path, strings=100, singles=300, folder=USPS_DIR):
    """Print what each rule of section [11b] is worth: numbers read exactly and digits right on
    strings of USPS digits and of MNIST test digits (made as in measure_numbers), and single
    digits read as several digits / read right (`singles` USPS digits in two presentations of
    --measure-usps, `singles` // 3 of two photo kinds of --measure-photos), with all rules, and
    with each taken out in turn.

        python docs/measure.py --measure-numbers MODEL [STRINGS [SINGLES]] --ablation
    """
    Ws, bs, meta = mnist.load_model(model_path)
    activation = meta.get("activation", "relu")
    typical = meta.get("typical_logit")
    usps = load_usps(folder)
    kinds = [("USPS", "p16 black"), ("USPS", "p64 white"), ("USPS", "photo")]
    if HAVE_MNIST:
        _, _, X_test, test_labels = real_mnist()
        kinds.append(("MNIST test", "p64 black"))
    columns = []   # (presentation, [(image bytes, true number)])
    for number, (source, how) in enumerate(kinds):
        images, labels = usps if source == "USPS" else (X_test.reshape(-1, 28, 28), test_labels)
        rng = np.random.default_rng(9000 + number)
        made = []
        for _ in range(strings):
            chosen = rng.choice(len(labels), int(rng.integers(2, 9)), replace=False)
            strip, _ = mnist.number_strip([mnist.glyph_of(images[i]) for i in chosen], mnist.random_gaps(len(chosen) - 1, rng), rng)
            made.append((present_number(strip, rng, how), "".join(str(int(labels[i])) for i in chosen)))
        columns.append((f"{source}, {NUMBER_PRESENTATIONS[how]}", made))
    lone = []  # (name, [(image bytes, true digit)]): single digits, which a rule may split
    chosen = np.random.default_rng(0).choice(len(usps[1]), singles, replace=False)
    for presentation in ((1, True, 0), (4, False, 0)):
        lone.append((f"single USPS digits, {presentation_name(*presentation)}",
                     [(present_digit(usps[0][i], *presentation), str(int(usps[1][i]))) for i in chosen]))
    for kind in ("photo", "photo on a table") if HAVE_MNIST else ():  # measure_photos' streams
        rng = np.random.default_rng(2024 + MEASURED_KINDS.index(kind))
        picked = rng.choice(len(test_labels), singles // 3, replace=False)
        lone.append((f"single digits, {kind}", [(make_image(kind, X_test[i].reshape(28, 28), rng),
                                                 str(int(test_labels[i]))) for i in picked]))
    print(f"model {model_path}; {strings} strings of 2-8 digits per column; numbers exactly right / digits "
          f"right; single digits: read as several digits / right")
    print("| taken out | " + " | ".join(name for name, _ in columns + lone) + " |")
    print("|---|" + "---|" * len(columns + lone))
    for name, change in [("nothing (all rules)", {})] + list(NUMBER_ABLATIONS.items()):
        cells = []
        with mock.patch.dict(mnist.NUMBER_RULES, change):
            for _, made in columns:
                read = [read_number_bytes(data, Ws, bs, activation, typical=typical) for data, _ in made]
                total = sum(len(truth) for _, truth in made)
                right = total - sum(mnist.edit_distance(truth, r) for (_, truth), r in zip(made, read))
                exact = sum(truth == r for (_, truth), r in zip(made, read))
                cells.append(f"{100 * exact / len(made):.1f} % / {100 * right / total:.1f} %")
            for _, made in lone:
                read = [read_number_bytes(data, Ws, bs, activation, typical=typical) for data, _ in made]
                several = sum(len(r) > 1 for r in read)
                cells.append(f"{several} / {100 * np.mean([r == truth for (_, truth), r in zip(made, read)]):.1f} %")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


NUMBER_LOSSES = ("read exactly",
                 "a cutting rule 5 tried reads it right; the score chose another",
                 "no cutting reads it right; a digit of it is misread even alone",
                 "no cutting reads it right; every digit is read right alone")


def number_loss(data, truth, digit_alone, Ws, bs, activation, typical):
    """Which of NUMBER_LOSSES a picture of the number `truth` falls in (its index). digit_alone(k):
    the picture of its k-th digit alone, in the same presentation. Needs: piece_lattices."""
    if read_number_bytes(data, Ws, bs, activation, typical=typical) == truth:
        return 0
    lattices = piece_lattices(data, Ws, bs, activation, typical)
    w = np.array([mnist.NUMBER_RULES["score_weights"][name] for name in mnist.SCORE_FEATURES])
    if lattices is not None and best_right_reading(lattices, truth, w) is not None:
        return 1
    alone = [read_number_bytes(digit_alone(k), Ws, bs, activation, alone=True, typical=typical)[1]
             for k in range(len(truth))]
    return 2 if any(str(one) != digit for one, digit in zip(alone, truth)) else 3


def measure_number_losses(model_path, strings=200, folder=USPS_DIR):
    """Print where the USPS strings that predict misreads are lost (NUMBER_LOSSES), per
    presentation: strings made as in measure_numbers (other random numbers). "A cutting reads it
    right": among the ways of cutting its pieces that rule 5 tries, one reads every digit right
    (best_right_reading), so a better score could have read it. "Misread even alone": one of its
    digits, drawn alone in the same presentation, is misread by predict, so no cutting could.
    The rest: no straight cut separates two of its digits well enough, or rules 1-4 joined,
    dropped or split pieces.

        python docs/measure.py --measure-numbers MODEL [STRINGS] --losses
    """
    Ws, bs, meta = mnist.load_model(model_path)
    activation = meta.get("activation", "relu")
    typical = meta.get("typical_logit")
    images, labels = load_usps(folder)
    print(f"model {model_path}; {strings} strings of 2-8 USPS digits per row")
    print("| presentation | " + " | ".join(NUMBER_LOSSES) + " |")
    print("|---|" + "---|" * len(NUMBER_LOSSES))
    for number, (how, name) in enumerate(NUMBER_PRESENTATIONS.items()):
        rng = np.random.default_rng(11000 + number)
        counts = [0] * len(NUMBER_LOSSES)
        for _ in range(strings):
            chosen = rng.choice(len(labels), int(rng.integers(2, 9)), replace=False)
            glyphs = [mnist.glyph_of(images[i]) for i in chosen]
            strip, _ = mnist.number_strip(glyphs, mnist.random_gaps(len(chosen) - 1, rng), rng)
            data = present_number(strip, rng, how)

            def digit_alone(k):
                return present_number(mnist.number_strip([glyphs[k]], [], rng)[0], rng, how)
            counts[number_loss(data, "".join(str(int(labels[i])) for i in chosen), digit_alone,
                               Ws, bs, activation, typical)] += 1
        print(f"| {name} | " + " | ".join(f"{count} ({100 * count / strings:.1f} %)" for count in counts) + " |",
              flush=True)


def piece_lattices(data, Ws, bs, activation, typical):
    """The pieces of a picture of a number, as rule 5 sees them: per piece (in reading order, one
    row expected), its candidate digits' features (piece_features), segments (i, j), last cut
    index n and the digits they are read as. None when the picture holds not exactly one row."""
    x28, _, steps = mnist.predict_image(*read_image(io.BytesIO(data)), Ws, bs, activation)
    if x28 is None:
        return None
    labels, rows = mnist.cut_into_digits(steps["pieces"], steps["ink"])
    if len(rows) != 1:
        return None
    row_height = float(np.median([box[1] - box[0] + 1 for _, box in rows[0]]))
    lattices = []
    for members, box in rows[0]:
        cuts, segments, _, Z, features = mnist.scored_candidates(
            steps["ink"], labels, members, box, steps["floor"], row_height,
            mnist.number_reader(Ws, bs, activation), typical, alone=len(rows[0]) == 1)
        lattices.append({"features": features, "segments": segments, "n": len(cuts) - 1,
                         "read": Z.argmax(axis=1)})
    return lattices


def best_reading(lattices, w):
    """The cutting of every piece that rule 5 chooses with the weights w: (features summed over
    its digits, the number read)."""
    total, read = 0.0, ""
    for piece in lattices:
        path = mnist.best_cutting(piece["features"] @ w, piece["segments"], piece["n"])
        total = total + piece["features"][path].sum(axis=0)
        read += "".join(str(piece["read"][s]) for s in path)
    return total, read


def fit_number_score(model_path, strings=200, singles=200, epochs=10):
    """Fit the weights of rule 5's score (NUMBER_RULES["score_weights"]) and print them: a
    structured perceptron (Collins 2002) on strings of 2-8 MNIST validation digits (the last
    5,000 training images, held out from training), made as in measure_numbers in the five
    FITTED_PRESENTATIONS, as many again whose digits all touch (the hard part), and single
    digits (a number reader must leave one digit whole). For each string, the cutting that the
    weights choose is compared with the best-scoring cutting that reads the string right; when
    they differ, the weights move towards the features of the right one and away from the chosen
    one (starting from 1 for "recognised", -1 for "digit" and 0 for the others). The average
    over all steps is kept.
    Then lone_margin: the smallest margin by which a lone piece's cutting must beat the piece
    whole so that none of `singles` lone validation digits per presentation, and per kind of
    image of the photo table (measure_photos), is cut, plus 1 (a tenth of a digit's cost).

        python docs/measure.py --fit-number-score MODEL [STRINGS [SINGLES]]
    """
    Ws, bs, meta = mnist.load_model(model_path)
    activation = meta.get("activation", "relu")
    typical = meta.get("typical_logit") or mnist.TYPICAL_TOP_LOGIT
    X_train, y_train, _, _ = real_mnist()
    images, labels = X_train[-5000:].reshape(-1, 28, 28), y_train[-5000:]
    made, lone = [], []
    for number, how in enumerate(FITTED_PRESENTATIONS):
        rng = np.random.default_rng(5000 + number)
        for _ in range(strings):
            chosen = rng.choice(len(labels), int(rng.integers(2, 9)), replace=False)
            strip, _ = mnist.number_strip([mnist.glyph_of(images[i]) for i in chosen], mnist.random_gaps(len(chosen) - 1, rng), rng)
            lattices = piece_lattices(present_number(strip, rng, how), Ws, bs, activation, typical)
            if lattices is not None:
                made.append((lattices, "".join(str(int(labels[i])) for i in chosen)))
        for _ in range(singles):
            chosen = rng.choice(len(labels), 1)
            strip, _ = mnist.number_strip([mnist.glyph_of(images[i]) for i in chosen], [], rng)
            lattices = piece_lattices(present_number(strip, rng, how), Ws, bs, activation, typical)
            if lattices is not None and len(lattices) == 1:
                lone.append(lattices[0])
                made.append((lattices, str(int(labels[chosen[0]]))))
        rng = np.random.default_rng(5100 + number)
        for _ in range(strings):  # the hard part: strings whose digits all touch
            chosen = rng.choice(len(labels), int(rng.integers(2, 9)), replace=False)
            strip, _ = mnist.number_strip([mnist.glyph_of(images[i]) for i in chosen], mnist.random_gaps(len(chosen) - 1, rng, 1.0), rng)
            lattices = piece_lattices(present_number(strip, rng, how), Ws, bs, activation, typical)
            if lattices is not None:
                made.append((lattices, "".join(str(int(labels[i])) for i in chosen)))
        print(f"{how}: {len(made) - len(lone)} strings, {len(lone)} single digits so far", flush=True)
    names = mnist.SCORE_FEATURES
    w = np.array([name == "recognised" for name in names], dtype=float) - np.array([name == "digit" for name in names])
    averaged, steps = np.zeros_like(w), 0
    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        mistakes = 0
        for k in rng.permutation(len(made)):
            lattices, truth = made[k]
            chosen, read = best_reading(lattices, w)
            if read != truth:
                right = best_right_reading(lattices, truth, w)
                if right is not None:
                    w = w + (right - chosen) / len(truth)
                    mistakes += 1
            averaged += w
            steps += 1
        print(f"epoch {epoch + 1}: {mistakes} strings of {len(made)} read wrong while fitting", flush=True)
    w = averaged / steps
    exact = sum(best_reading(lattices, w)[1] == truth for lattices, truth in made)
    for kind in MEASURED_KINDS:
        rng = np.random.default_rng(6000 + MEASURED_KINDS.index(kind))
        for i in rng.choice(len(labels), singles, replace=False):
            lattices = piece_lattices(make_image(kind, images[i], rng), Ws, bs, activation, typical)
            if lattices is not None and len(lattices) == 1:
                lone.append(lattices[0])
    margins = [0.0]
    for piece in lone:
        scores = piece["features"] @ w
        path = mnist.best_cutting(scores, piece["segments"], piece["n"])
        margins.append(scores[path].sum() - scores[piece["segments"].index((0, piece["n"]))])
    print(f"{exact} of {len(made)} strings and single digits read exactly with the averaged weights; "
          f"without a margin, {sum(m > 0 for m in margins)} of {len(lone)} lone digits would be cut")
    scale = 10 / -w[names.index("digit")]  # only the weights' ratios matter: each digit costs 10
    print('"score_weights": {' + ", ".join(f'"{name}": {scale * value:.2f}' for name, value in zip(names, w)) + "},")
    # the largest margin of a lone validation digit, plus a tenth of a digit's cost for digits
    # unlike them (without it, a USPS 6 of measure_numbers' single digits was cut in two)
    print(f'"lone_margin": {np.ceil(scale * max(margins) * 10) / 10 + 1.0:.1f},')


def time_number_photos(model_path, photos=5, folder=USPS_DIR):
    """Time predict on 12-megapixel (4000 x 3000) phone photos of 10-digit USPS numbers: reading
    the JPEG (read_image), preparing it (predict_image) and cutting and reading the digits
    (read_digits), each on its own, per photo and the median.

        python docs/measure.py --time-number-photos MODEL [PHOTOS] [USPS_FOLDER]
    """
    from PIL import Image
    Ws, bs, meta = mnist.load_model(model_path)
    activation = meta.get("activation", "relu")
    typical = meta.get("typical_logit")
    images, labels = load_usps(folder)
    times = []
    with tempfile.TemporaryDirectory() as temporary:
        for number in range(photos):
            rng = np.random.default_rng(100 + number)
            chosen = rng.choice(len(labels), 10, replace=False)
            strip, _ = mnist.number_strip([mnist.glyph_of(images[i]) for i in chosen], mnist.random_gaps(9, rng), rng)
            size = (800, round(strip.shape[0] * 800 / strip.shape[1]))
            ink = np.zeros((750, 1000), np.float32)
            ink[300:300 + size[1], 100:900] = np.clip(np.asarray(Image.fromarray(strip, "F").resize(size, Image.BICUBIC)), 0, 1)
            photo = Image.open(io.BytesIO(photograph(ink, rng))).resize((4000, 3000), Image.BICUBIC)
            path = os.path.join(temporary, "photo.jpg")
            photo.save(path, "JPEG", quality=90)
            start = time.perf_counter()
            gray, alpha = read_image(path)
            read = time.perf_counter()
            x28, P, steps = mnist.predict_image(gray, alpha, Ws, bs, activation)
            prepared = time.perf_counter()
            digits = mnist.read_digits(steps, mnist.number_reader(Ws, bs, activation),
                                       typical or mnist.TYPICAL_TOP_LOGIT)
            done = time.perf_counter()
            times.append((read - start, prepared - read, done - prepared))
            print(f"{''.join(str(int(labels[i])) for i in chosen)} read as {mnist.number_text(digits)}: "
                  f"read_image {times[-1][0]:.2f} s, predict_image {times[-1][1]:.2f} s, "
                  f"cutting and reading the digits {times[-1][2]:.2f} s", flush=True)
    median = np.median(times, axis=0)
    print(f"median: read_image {median[0]:.2f} s, predict_image {median[1]:.2f} s, cutting and reading "
          f"{median[2]:.2f} s; predict_image + cutting and reading {np.median([t[1] + t[2] for t in times]):.2f} s")


# ==== The command line: python docs/measure.py MODE [ARGUMENTS] ==================================
# The arguments of a mode are told apart by their form, in any order: a whole number is a count
# (the counts in the order of the mode's usage), a word naming an existing folder is the USPS
# folder, any other word is a file (MODEL, or OUT.png), a word starting with -- picks a variant.

class Mode(NamedTuple):
    name: str       # the first word: "--measure-usps"
    variant: str    # a second switch that picks another measurement ("--ablation"), or ""
    files: tuple    # the file arguments in order, each with its default; ("MODEL ...",) takes many
    counts: tuple   # the whole numbers, each optional after the ones before it
    usps: bool      # it reads USPS digits (from USPS_FOLDER, else $USPS_DIR, else data/usps)
    what: str       # one line for --help
    run: Callable   # run(files, counts, usps_folder) -> exit status (None: 0)


MODEL = ("MODEL", "model.npz")

MODES = [
    Mode("--measure-usps", "", (("MODEL ...", "model.npz"),), ("DIGITS",), True,
         "the USPS table: each model on USPS digits in 8 presentations, beside the plain recipe",
         lambda files, counts, folder: measure_usps(files, *counts, folder=folder)),
    Mode("--measure-usps", "--ablation", (MODEL,), ("DIGITS", "PHOTOS_PER_KIND", "NO_DIGIT_PER_KIND"), True,
         "what each step of section [11] is worth: each taken out in turn, on USPS and photos",
         lambda files, counts, folder: measure_ablation(files[0], *counts, usps_folder=folder)),
    Mode("--measure-photos", "", (MODEL,), ("IMAGES_PER_KIND",), False,
         "the synthetic photo table, and no-digit images given a digit",
         lambda files, counts, folder: measure_photos(files[0], *counts)),
    Mode("--measure-large-photos", "", (MODEL,), ("IMAGES",), False,
         "synthetic photos of 1600-4100 px, read shrunk and with every pixel",
         lambda files, counts, folder: measure_large_photos(files[0], *counts)),
    Mode("--measure-speed", "", (), ("EPOCHS", "REPEATS"), False,
         "one training epoch of this program beside PyTorch's (pip install torch==2.13.0)",
         lambda files, counts, folder: measure_speed(*counts)),
    Mode("--measure-serve", "", (MODEL,), ("THREADS", "REQUESTS_PER_THREAD"), False,
         "serve under load: answers as predict gives them, latency (exit status 1 if one differs)",
         lambda files, counts, folder: 0 if measure_serve(files[0], *counts) else 1),
    Mode("--measure-serve-memory", "", (MODEL,), ("SIDE", "AT_ONCE"), False,
         "peak memory of serve answering the largest images at once (Linux)",
         lambda files, counts, folder: measure_serve_memory(files[0], *counts)),
    Mode("--measure-predict-photo", "", (MODEL,), ("WIDTH", "HEIGHT"), False,
         "peak memory and time of predict on a 12-megapixel photo (Linux)",
         lambda files, counts, folder: measure_predict_photo(files[0], *counts)),
    Mode("--measure-slow-clients", "", (MODEL,), ("CLIENTS",), False,
         "serve while clients send their requests a byte a second (Linux)",
         lambda files, counts, folder: measure_slow_clients(files[0], *counts)),
    Mode("--serve-screenshot", "", (MODEL, ("OUT.png", os.path.join(ROOT, "docs", "serve.png"))), (), False,
         "the README's picture of the served page (headless Chromium, selenium)",
         lambda files, counts, folder: serve_screenshot(*files)),
    Mode("--measure-notebooks", "", (), ("RUNS",), False,
         "both notebooks run in a Jupyter kernel: seconds, cells, pictures",
         lambda files, counts, folder: measure_notebooks(*counts)),
    Mode("--measure-numbers", "", (MODEL,), ("STRINGS", "SINGLES"), True,
         "the number tables: strings of USPS and MNIST digits, single digits read as several",
         lambda files, counts, folder: measure_numbers(files[0], *counts, folder=folder)),
    Mode("--measure-numbers", "--ablation", (MODEL,), ("STRINGS", "SINGLES"), True,
         "what each rule of section [11b] is worth: each taken out in turn",
         lambda files, counts, folder: measure_number_ablation(files[0], *counts, folder=folder)),
    Mode("--measure-numbers", "--losses", (MODEL,), ("STRINGS",), True,
         "where the misread USPS strings are lost",
         lambda files, counts, folder: measure_number_losses(files[0], *counts, folder=folder)),
    Mode("--fit-number-score", "", (MODEL,), ("STRINGS", "SINGLES"), False,
         "fit rule 4's score weights and lone_margin on MNIST validation digits; prints them",
         lambda files, counts, folder: fit_number_score(files[0], *counts)),
    Mode("--time-number-photos", "", (MODEL,), ("PHOTOS",), True,
         "time predict on 12-megapixel photos of 10-digit USPS numbers",
         lambda files, counts, folder: time_number_photos(files[0], *counts, folder=folder)),
]


class UsageError(Exception):
    """Words this script cannot run; the message says which and what to type instead."""


def usage(mode):
    """A mode as --help shows it: "--measure-serve [MODEL] [THREADS [REQUESTS_PER_THREAD]]"."""
    files = " ".join(f"[{name}]" for name, _ in mode.files)
    counts = "".join(f" [{name}" for name in mode.counts) + "]" * len(mode.counts)
    words = [mode.name, files, counts.strip(), "[USPS_FOLDER]" if mode.usps else "", mode.variant]
    return " ".join(word for word in words if word)


def help_text():
    """What --help prints: the usage, then every mode with its arguments and what it measures."""
    lines = [f"usage: python {os.path.relpath(__file__, ROOT)} MODE [ARGUMENTS]", "",
             "The measurements behind docs/results.md. MODEL defaults to model.npz (in the folder this",
             "runs in); USPS_FOLDER is the folder holding USPS's zip.train.gz (default: $USPS_DIR, else",
             "the repository's data/usps). Numbers are counts, in the order shown. Modes:", ""]
    for mode in MODES:
        lines += [f"  {usage(mode)}", f"      {mode.what}"]
    return "\n".join(lines)


def parse(words):
    """The mode named by `words` (the command line after the script's name) and its arguments:
    (mode, files, counts, USPS folder). Nothing is measured; wrong words raise UsageError."""
    if not words:
        raise UsageError("name a mode (python docs/measure.py --help lists them)")
    variants = [word for word in words[1:] if word.startswith("--")]
    modes = [mode for mode in MODES if mode.name == words[0]]
    chosen = [mode for mode in modes if [mode.variant] == (variants or [""])]
    if not modes:
        raise UsageError(f"no mode {words[0]}: the modes are " + ", ".join(sorted({mode.name for mode in MODES})))
    if not chosen:
        raise UsageError(f"{words[0]} takes " + " or ".join(f"'{usage(mode)}'" for mode in modes))
    mode = chosen[0]
    rest = [word for word in words[1:] if not word.startswith("--")]
    counts = [int(word) for word in rest if word.isdigit()]
    folders = [word for word in rest if not word.isdigit() and mode.usps and os.path.isdir(word)]
    files = [word for word in rest if not word.isdigit() and word not in folders]
    many = mode.files[-1][0].endswith("...") if mode.files else False
    if len(counts) > len(mode.counts) or len(folders) > 1 or (len(files) > len(mode.files) and not many):
        raise UsageError(f"too many arguments for {usage(mode)}")
    files += [default for _, default in mode.files[len(files):]]
    return mode, files, counts, folders[0] if folders else USPS_DIR


def missing_input(mode, files, folder):
    """What the measurement would fail to find (a model, USPS's file), as a message, or None."""
    first = [name for name, _ in mode.files][:1]
    models = files if first == ["MODEL ..."] else files[:1] if first == ["MODEL"] else []
    for path in models:
        if not os.path.isfile(path):
            return f"no model at {path}: train one with python mnist_from_scratch.py train --model {path}"
    tools = missing_for_the_notebook_tests() if mode.name == "--measure-notebooks" else ()
    if tools:
        return f"the notebooks run in a Jupyter kernel, which needs {', '.join(tools)} (pip install nbclient ipykernel)"
    if mode.usps and not os.path.isfile(os.path.join(folder, "zip.train.gz")):
        return (f"no zip.train.gz in {folder}: put USPS's file there, or name its folder "
                "(an argument, or the environment variable USPS_DIR)")
    return None


def main(words):
    """Run the mode `words` name (the command line after the script's name); the exit status."""
    if words[:1] in (["-h"], ["--help"]):
        print(help_text())
        return 0
    try:
        mode, files, counts, folder = parse(words)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    missing = missing_input(mode, files, folder)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    return mode.run(files, counts, folder) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
