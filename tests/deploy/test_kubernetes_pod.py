"""The default install's pod, run on this machine as the kubelet would run it.

The rendered container's command with the rendered environment, as the rendered user
(uid 10001, no new privileges; as root where this machine's Python is out of other users'
reach, as under /root), each volume mount mapped to a temporary folder (the token
Secret's folder holds a token file), under a read-only root: as root, ``unshare -m`` gives
the process a mount namespace of its own, each folder is bound onto itself (so it stays
writable) and ``/`` is remounted read-only. Redis is a local ``redis-server``. Then: every
probe answers 200; the ServiceMonitor's endpoint answers 200 with the Secret's token and
401 without; a rotated token applies without a restart; SIGTERM to the first process
alone leaves no process within the grace period less the preStop sleep; with Redis
unreachable the pod still becomes ready.

Not a container: the image's filesystem is this machine's (the venv stands for the
image's site-packages) and the first process is not PID 1 (uvicorn installs its signal
handlers either way).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.test_kubernetes import KUBERNETES, _env, one
from tests.support.redis_server import redis_server
from tests.support.servers import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
READY_TIMEOUT_S = 90.0  # the startup probe allows 2 s x 45
POLL_S = 0.25
TOKEN = "k8s-test-token-0123456789abcdef"


def _sandbox_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for unshare -m and mount"
    for tool in ("unshare", "mount", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        return f"unshare -m is not permitted here: {probe.stderr.decode(errors='replace').strip()}"
    return None


pytestmark = pytest.mark.skipif(_sandbox_reason() is not None, reason=str(_sandbox_reason()))


class Pod:
    def __init__(self, process: subprocess.Popen[bytes], ports: dict[str, int], container: dict[str, Any],
                 token_file: Path, log: Path) -> None:
        self.folder = log.parent
        self.process = process
        self.ports = ports
        self.container = container
        self.token_file = token_file
        self.log = log

    def url(self, port: str | int, path: str) -> str:
        number = self.ports[port] if isinstance(port, str) else port
        return f"http://{LOOPBACK}:{number}{path}"

    def probe(self, name: str) -> int:
        spec = self.container[name]["httpGet"]
        return httpx.get(self.url(spec["port"], spec["path"]), timeout=3).status_code

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.probe("startupProbe") == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)
        raise AssertionError(f"not ready within {READY_TIMEOUT_S} s\n{self.log.read_text()[-3000:]}")


def interpreter_reachable() -> bool:
    """Whether any user may run this venv's interpreter (every folder above it traversable):
    on a machine whose Python lives in root's private home the pod runs as root instead."""
    path = Path(os.path.realpath(sys.executable))
    return all(folder.stat().st_mode & 0o001 for folder in path.parents) and bool(path.stat().st_mode & 0o001)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def run_pod(tmp_path: Path, redis_url: str) -> Iterator[Pod]:
    # pytest's temporary folders are private to root: the pod's user must reach its volumes.
    tmp_path = Path(tempfile.mkdtemp(prefix="gateway-metrics-pod-"))
    os.chmod(tmp_path, 0o755)
    try:
        with _run_pod(tmp_path, redis_url) as pod:
            yield pod
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


@contextmanager
def _run_pod(tmp_path: Path, redis_url: str) -> Iterator[Pod]:
    deployment = one(KUBERNETES, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    user = container["securityContext"]["runAsUser"]
    group = container["securityContext"]["runAsGroup"]
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    # Each volume mount: a temporary folder, owned by the pod's user (fsGroup), bound onto itself.
    mapped: dict[str, Path] = {}
    token_file = tmp_path / "unused"
    for mount in container["volumeMounts"]:
        folder = tmp_path / f"volume-{mount['name']}"
        folder.mkdir()
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            assert secret["secretName"] == "gateway-metrics-token"
            token_file = folder / "token"
            token_file.write_text(TOKEN)
            os.chmod(token_file, secret["defaultMode"])
        os.chown(folder, user, group)
        for path in [folder, *folder.iterdir()]:
            os.chown(path, user, group)
        mapped[mount["mountPath"]] = folder
    # Ports: each named container port on a free loopback port.
    ports = {port["name"]: free_port() for port in container["ports"]}
    by_number = {str(port["containerPort"]): str(ports[port["name"]]) for port in container["ports"]}
    env = {}
    for name, value in _env(container).items():
        for mount_path in sorted(mapped, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                value = str(mapped[mount_path]) + value[len(mount_path):]
                break
        env[name] = by_number.get(value, value)
    env["GATEWAY_METRICS_HOST"] = LOOPBACK
    env["GATEWAY_METRICS_REDIS_URL"] = redis_url
    env["GATEWAY_METRICS_PROMETHEUS_URL"] = f"http://{LOOPBACK}:{free_port()}"  # kube-prometheus-stack: absent
    if "/tmp" in mapped:
        env["TMPDIR"] = str(mapped["/tmp"])
    env.update(PATH=f"{VENV_BIN}:/usr/bin:/bin", HOME=str(mapped.get("/tmp", tmp_path)), PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=str(ROOT))
    binds = " ".join(f"mount --bind {folder} {folder};" for folder in mapped.values())
    script = f'{binds} mount -o remount,bind,ro / && exec "$@"'
    as_user = ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", "--no-new-privs"]
    argv = ["unshare", "-m", "sh", "-c", script, "sh", *(as_user if interpreter_reachable() else []),
            *container["command"], *container.get("args", [])]
    log = tmp_path / "pod.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield Pod(process, ports, container, token_file, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        for pid in descendants(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_rendered_pod_serves_under_a_read_only_root_and_stops_on_sigterm(tmp_path: Path) -> None:
    with redis_server() as redis, run_pod(tmp_path, redis.url) as pod:
        pod.wait_ready()
        # The root is read-only for the pod: nothing but its volumes is writable.
        mounts = [line.split() for line in Path(f"/proc/{pod.process.pid}/mountinfo").read_text().splitlines()]
        assert [m[5].split(",")[0] for m in mounts if m[4] == "/"] == ["ro"], mounts
        assert {m[4] for m in mounts if m[5].startswith("rw")} >= {str(f) for f in pod.folder.glob("volume-*")}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert pod.probe(probe) == 200, probe
        ready = httpx.get(pod.url("http", "/ready"), timeout=3).json()
        assert [channel["name"] for channel in ready["health_sharing"]], ready
        monitor = one(KUBERNETES, "ServiceMonitor")
        for endpoint in monitor["spec"]["endpoints"]:
            url = pod.url(endpoint["port"], endpoint["path"])
            assert httpx.get(url, timeout=10).status_code == 401
            answer = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            assert answer.status_code == 200 and "http_requests_total" in answer.text
        # The multiprocess files are in the pod's emptyDir.
        assert list((pod.folder / "volume-multiproc").glob("*.db"))
        # A rotated Secret (the kubelet swaps the file) applies without a restart.
        rotated = pod.token_file.with_name("token.new")
        rotated.write_text("rotated-token-abcdefghijklmnop")
        os.replace(rotated, pod.token_file)
        url = pod.url(monitor["spec"]["endpoints"][0]["port"], "/metrics")
        assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer rotated-token-abcdefghijklmnop"},
                         timeout=10).status_code == 200
        # SIGTERM to the first process alone: every process ends within the grace period
        # less the preStop sleep.
        pod_spec = one(KUBERNETES, "Deployment")["spec"]["template"]["spec"]
        budget = pod_spec["terminationGracePeriodSeconds"] - pod.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        processes = descendants(pod.process.pid) | {pod.process.pid}
        assert len(processes) >= 4, processes  # supervisor, 2 workers, the exporter
        started = time.monotonic()
        pod.process.send_signal(signal.SIGTERM)
        deadline = started + budget
        while time.monotonic() < deadline and any(alive(pid) for pid in processes):
            pod.process.poll()
            time.sleep(0.1)
        left = [pid for pid in processes if alive(pid)]
        assert not left, (left, pod.log.read_text()[-3000:])
        assert pod.process.wait(1) == 0


def test_with_redis_unreachable_the_pod_still_becomes_ready(tmp_path: Path) -> None:
    with run_pod(tmp_path, f"redis://{LOOPBACK}:{free_port()}/0") as pod:
        pod.wait_ready()
        for probe in ("readinessProbe", "livenessProbe"):
            assert pod.probe(probe) == 200, probe
        pod.process.send_signal(signal.SIGTERM)
        pod.process.wait(30)
