"""A Python that starts in milliseconds, for the tests' script processes.

Most tests run the scripts (run.py, save_features.py, logme.py, the sweep scripts) as a user does, and
each fresh Python spends about 5 of the 2 cores' seconds importing torch, timm and transformers before
the first line of the script. Here one server process imports them once; a test's command line then
runs in a fork of it: its own process, with the command's arguments, folder, environment and
stdin/stdout/stderr, signals forwarded and the exit status (or the signal that ended it) passed back,
so a script cannot tell the difference but for the time it saved. Where it could tell, the command
runs in a real Python instead: an interpreter option, torchrun, or an environment variable that
torch, transformers or the Hugging Face libraries read when they are imported.

    python tests/forkserver.py serve SOCKET   # the server (the tests start one per session)
    FORKSERVER_SOCKET=SOCKET shim ARGS...      # a client: `shim` is what `client_script` writes

The tests that are about a real process (a kill, torchrun, the installed package) run one.
"""
import json
import os
import select
import signal
import socket
import struct
import sys

SOCKET_VARIABLE = "FORKSERVER_SOCKET"
# Read when torch, transformers or huggingface_hub are imported: a command that changes one runs in a
# real Python (PYTHONPATH is applied to the fork's sys.path instead, and the thread counts to torch's).
# CUDA_* are read when CUDA starts, which the server never does; TOKENIZERS_* when a tokenizer runs.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
IMPORT_TIME_PREFIXES = ("HF_", "HUGGINGFACE", "TRANSFORMERS", "TORCH", "PYTORCH", "OMP_", "MKL_",
                        "KMP_", "GOMP_", "SAFETENSORS", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONUTF8",
                        "PYTHONIOENCODING", "PYTHONSAFEPATH", "LD_", "LC_", "LANG")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                     signal.SIGQUIT)
PRELOAD = ("numpy", "torch", "torchvision", "timm", "transformers", "PIL.Image", "absl.flags", "tqdm",
           "safetensors.torch", "huggingface_hub", "sklearn.datasets", "datasets")


# --- the client: a few stdlib imports, then it waits --------------------------------------------

def client_script(python, path):
    """Write an executable at `path` that runs its command line in the server (`python` is the real
    interpreter it falls back to); return `path`."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(path, "w") as f:
        f.write(f"#!{python} -sE\nimport sys\nsys.path.insert(0, {here!r})\nimport forkserver\n"
                f"forkserver.client({python!r}, sys.argv[1:])\n")
    os.chmod(path, 0o755)
    return path


def _send(sock, payload, fds=()):
    data = json.dumps(payload).encode()
    socket.send_fds(sock, [struct.pack("!Q", len(data))], list(fds))
    sock.sendall(data)


def _receive(sock, fds=0):
    header, got, _, _ = socket.recv_fds(sock, 8, fds)
    if len(header) < 8:
        return None, got
    size, data = struct.unpack("!Q", header)[0], b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None, got
        data += chunk
    return json.loads(data), got


def client(python, args):
    path = os.environ.get(SOCKET_VARIABLE)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        _send(sock, dict(args=args, cwd=os.getcwd(), env=dict(os.environ)), fds=(0, 1, 2))
        reply, _ = _receive(sock)
    except (OSError, TypeError):
        reply = None
    if not reply or "pid" not in reply:  # a command the fork cannot run as Python would, or no server
        sock.close()
        os.execv(python, [python, *args])
    pid = reply["pid"]

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in FORWARDED_SIGNALS:
        signal.signal(s, forward)
    reply, _ = _receive(sock)
    status = reply["status"] if reply else 1 << 8
    if os.WIFSIGNALED(status):
        for s in FORWARDED_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        if os.WTERMSIG(status) not in (signal.SIGKILL, signal.SIGSTOP):  # (those two have no handler to reset)
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


# --- the server ----------------------------------------------------------------------------------

def _command(args):
    """(kind, target, argv) for the command lines a fork runs as Python would, else None."""
    if not args:
        return None
    if args[0] == "-c" and len(args) > 1:
        return "code", args[1], ["-c", *args[2:]]
    if args[0] == "-m" and len(args) > 1 and not args[1].startswith("torch.distributed"):
        return "module", args[1], [args[1], *args[2:]]
    if not args[0].startswith("-"):
        return "path", args[0], args
    return None


def _runs_here(request, base_env, added, searched):
    """Whether the command's environment is the server's where the imports read it (`added`: what the
    imports themselves set, which a caller that imported them too passes on), and its PYTHONPATH adds no
    folder the server did not search (`searched`): a module there could stand in for one already imported."""
    if _command(request["args"]) is None:
        return False
    env = request["env"]
    new = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
           if p and os.path.abspath(os.path.join(request["cwd"], p)) not in searched]
    if new:
        print(f"real Python for {request['args'][:2]}: PYTHONPATH adds {', '.join(new)}", file=sys.stderr, flush=True)
        return False
    names = {k for k in (*env, *base_env) if k.startswith(IMPORT_TIME_PREFIXES) and k not in THREAD_VARIABLES}
    differ = sorted(k for k in names if env.get(k) != base_env.get(k) and not (k in added and env.get(k) == added[k]))
    if differ:  # the server's log says why a command ran in a real Python
        print(f"real Python for {request['args'][:2]}: {', '.join(differ)} differ", file=sys.stderr, flush=True)
    return not differ


def _run(kind, target, argv, env, base_path):
    """In the fork: become the command, then exit as Python would."""
    import runpy
    sys.argv = argv
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    first = os.path.dirname(os.path.abspath(target)) if kind == "path" else os.getcwd() if kind == "module" else ""
    sys.path[:] = [first, *extra, *base_path]
    code = 0
    try:
        if kind == "path":
            runpy.run_path(target, run_name="__main__")
        elif kind == "module":
            sys.modules.pop(target, None)  # preloaded, it would not be what `python -m` runs (a fresh copy)
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else (print(e.code, file=sys.stderr), 1)[1]
    except BaseException as e:
        tb = e.__traceback__
        while tb and tb.tb_frame.f_code.co_filename in (_run.__code__.co_filename, "<frozen runpy>"):
            tb = tb.tb_next  # the traceback starts in the command, as Python's does
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        code = -signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1
    try:
        import threading
        threading._shutdown()
        import atexit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if code < 0:  # Python dies of an uncaught KeyboardInterrupt by SIGINT
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)


def _handle(conn, base_env, added, searched, base_path, threads):
    """In a fork of the server: start the command in a fork of its own, then report its end."""
    request, fds = _receive(conn, 3)
    if request is None or len(fds) != 3 or not _runs_here(request, base_env, added, searched):
        _send(conn, {})
        os._exit(0)
    kind, target, argv = _command(request["args"])
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        conn.close()
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({**added, **request["env"]})
        import numpy
        import torch
        numpy.random.seed()  # a fresh process's numpy state is its own, not the server's
        given = request["env"].get("OMP_NUM_THREADS") or request["env"].get("MKL_NUM_THREADS") or ""
        torch.set_num_threads(int(given) if given.isdigit() and int(given) > 0 else threads)
        _run(kind, target, argv, request["env"], base_path)
    for fd in fds:
        os.close(fd)
    _send(conn, dict(pid=pid))
    try:
        watch = [os.pidfd_open(pid)]  # readable when the command ends (Linux 5.3)
    except (AttributeError, OSError):
        watch = []  # else a look every 50 ms
    while True:
        ready, _, _ = select.select([conn, *watch], [], [], None if watch else 0.05)
        done, status = os.waitpid(pid, os.WNOHANG) if watch == [] or watch[0] in ready else (0, 0)
        if done:
            try:
                _send(conn, dict(status=status))
            except OSError:
                pass
            os._exit(0)
        if conn in ready and not conn.recv(1):  # the client is gone (killed): so is its command
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os._exit(0)


def serve(path):
    import importlib
    base_env, parent = dict(os.environ), os.getppid()
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a fork of a process whose thread pool ran can hang in its first op
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import pkgutil
    import aft
    for info in pkgutil.walk_packages(aft.__path__, "aft."):
        importlib.import_module(info.name)
    from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: F401  (their lazy imports)
    if os.fstat(2).st_size:  # the imports said something a fresh Python would say to each command
        sys.exit("forkserver: the imports wrote to stderr, so a fork would not print what Python does; not serving")
    added = {k: v for k, v in os.environ.items() if base_env.get(k) != v}  # what the imports set, as they would
    extra = [p for p in base_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    base_path = [p for p in sys.path[1:] if p not in extra]
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # aft's, imported from there
    searched = {os.path.abspath(p) for p in sys.path if p} | {repository}
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the handlers' forks reap themselves
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the tests wait for the name: it appears when the server listens
    listener.listen(64)
    listener.settimeout(5)
    while os.getppid() == parent:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        if os.fork() == 0:
            listener.close()
            _handle(conn, base_env, added, searched, base_path, threads)
        conn.close()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])
