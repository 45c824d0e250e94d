"""Shared test setup: offline hubs, no Ray telemetry, one intra-op thread per test process."""

import os

import pytest
import torch

import triton_env  # noqa: F401  (before any test module can import triton: see triton_env.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")


# One intra-op thread for the whole session, module and session fixtures included. The tests'
# tensors are small: on a 2-core machine shared with Ray workers and torchrun ranks, torch's
# spin-waiting thread pool makes them several times slower, not faster. And one thread count
# everywhere: a fixture run with two threads sums in another order than the one-thread
# subprocesses it is compared with.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Each test starts with one thread, whatever the code under the previous test set."""
    torch.set_num_threads(1)
    yield


class S3Server:
    """A real S3 API server (moto) on a free loopback port, shared by the whole test session."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.address = (host, int(port))
        self.endpoint = f"http://{host}:{port}"
        # s3fs storage options; the same values as environment variables for code that reads them.
        self.options = {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}
        self.env = {"LAMAMBA_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def bucket(self, name: str) -> dict:
        """Create bucket ``name`` (names are per test, >= 3 characters); returns the storage options."""
        from lamamba import storage

        fs, _ = storage.filesystem(f"s3://{name}", self.options)
        fs.mkdir(name)
        return dict(self.options)

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


# A fixed small dataset for the training and experiment tests: sklearn's 8x8 digits encoded
# (identity autoencoder) by the data pipeline's own encode job.
@pytest.fixture(scope="session")
def digits_manifest(tmp_path_factory) -> str:
    from data_pipeline.config import EncodeConfig, RayConfig, SourceConfig
    from data_pipeline.job import run_encode
    from lamamba.autoencoders import AutoencoderConfig

    root = tmp_path_factory.mktemp("digits-latents")
    cfg = EncodeConfig(run_dir=str(root), resolution=8, shard_size=512, batch_size=512,
                       source=SourceConfig(kind="digits", split="train"),
                       autoencoder=AutoencoderConfig(kind="identity", image_channels=1), ray=RayConfig(num_workers=0))
    return run_encode(cfg).manifest_url


class FlakyProxy:
    """A TCP proxy on a free loopback port in front of ``upstream`` (host, port) that behaves like
    object storage over a real network: every request chunk from the client waits ``latency_s``
    before it is forwarded, and every ``cut_every``-th connection is reset once it has carried
    ``cut_after`` bytes of response (0 = never). ``cuts`` counts the resets, ``connections`` the
    connections accepted."""

    def __init__(self, upstream: tuple[str, int], latency_s: float = 0.0, cut_every: int = 0, cut_after: int = 4096):
        import socket
        import threading

        self.upstream, self.latency_s, self.cut_every, self.cut_after = upstream, latency_s, cut_every, cut_after
        self.connections = self.cuts = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                cut = bool(self.cut_every) and self.connections % self.cut_every == 0
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client, cut: bool) -> None:
        import socket
        import struct
        import threading
        import time

        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return

        def reset() -> None:
            for sock in (client, upstream):
                try:  # SO_LINGER 0: the peer sees a connection reset, as from a dropped route
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the other direction's blocked recv
                except OSError:
                    pass
                sock.close()

        def requests() -> None:
            try:
                while data := client.recv(65536):
                    time.sleep(self.latency_s)
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    upstream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=requests, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                if cut and sent + len(data) > self.cut_after:
                    client.sendall(data[:max(self.cut_after - sent, 0)])
                    with self._lock:
                        self.cuts += 1
                    reset()
                    return
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (client, upstream):  # the server closed: close gracefully, the client reads what was sent
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def stop(self) -> None:
        self._stopped.set()
        self._server.close()


def _proxies(kind):
    """A fixture body: yields ``make(upstream, **options) -> kind``; stops what it made after the test."""
    proxies = []

    def make(upstream, **options):
        proxies.append(kind(upstream, **options))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def flaky_proxy():
    """``flaky_proxy((host, port), latency_s=..., cut_every=..., cut_after=...) -> FlakyProxy``,
    stopped after the test."""
    yield from _proxies(FlakyProxy)


class OutageProxy(FlakyProxy):
    """A :class:`FlakyProxy` whose endpoint can go away: :meth:`go_away` resets every open
    connection (pooled keep-alive ones included) and drops new ones until :meth:`come_back`."""

    def __init__(self, upstream: tuple[str, int], **options):
        self.gone = False
        self._live: set = set()
        super().__init__(upstream, **options)

    def _serve(self, client, cut: bool) -> None:
        if self.gone:
            client.close()
            return
        self._live.add(client)
        try:
            super()._serve(client, cut)
        finally:
            self._live.discard(client)

    def go_away(self) -> None:
        import socket

        self.gone = True
        for client in list(self._live):
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def come_back(self) -> None:
        self.gone = False


@pytest.fixture
def outage_proxy():
    """``outage_proxy((host, port)) -> OutageProxy``, stopped after the test."""
    yield from _proxies(OutageProxy)
