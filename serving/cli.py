"""The ``tailor`` command line.

Every command reads the settings once, and turns configuration and
connection problems into one line naming the setting to fix (exit code 2)
instead of a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from serving.console import Console, loud_console, quiet_console
from storage.errors import ConfigurationError, StorageError

if TYPE_CHECKING:
    import uvicorn

    from finetune.lease_sweeper import LeaseSweeper
    from serving.runtime import ModelRuntime
    from serving.services import Services
    from serving.settings import Settings
    from serving.worker_supervisor import WorkerSupervisor

app = typer.Typer(help="Tailor: personalised LLM serving.", no_args_is_help=True)
models_app = typer.Typer(help="The model store of base models.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
admin_app = typer.Typer(help="Users and API keys, without the HTTP API.", no_args_is_help=True)
router_app = typer.Typer(help="The model router.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(router_app, name="router")


@app.callback()
def _main() -> None:
    # Tailor never fetches weights at run time; fail fast rather than hang
    # on a hub that this machine cannot reach.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _log_to_stderr() -> None:
    # Not logging.basicConfig: a quiet console has already put its own
    # handler on the root logger, and basicConfig would then do nothing.
    handler = logging.StreamHandler()  # sys.stderr now: the terminal, or the quiet log
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except StorageError as exc:
        typer.echo(f"tailor: error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides TAILOR_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides TAILOR_PORT.")] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run on Ray Serve: an ingress and a deployment per model.")
    ] = False,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the Ray Serve config (YAML) and exit.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            help="Print only Tailor's own progress and warnings; everything else (libraries, "
            "request logs, the fine-tune worker) goes to <data dir>/log/tailor.log.",
        ),
    ] = False,
) -> None:
    """Run the service (embedded mode: everything in this process)."""
    from serving.settings import load_settings

    server: dict[str, object] = {}
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    with _one_line_errors():
        settings = load_settings(server=server)
    if print_config or ray:
        if find_spec("ray") is None:
            typer.echo(
                "tailor: error: --ray and --print-config need Ray: pip install 'tailor[ray]'",
                err=True,
            )
            raise typer.Exit(2)
        _serve_on_ray_or_print_config(settings, print_config=print_config)
        return
    output = quiet_console(log_path(settings)) if quiet else nullcontext(loud_console())
    # Errors leave the quiet console first, so that they reach the terminal.
    with _one_line_errors(), output as console:
        _serve_embedded(settings, console)


def log_path(settings: Settings) -> Path:
    return settings.storage.data_dir / "log" / "tailor.log"


def _serve_embedded(settings: Settings, console: Console) -> None:
    import uvicorn

    from models.catalog import register_prepared_models
    from models.store import load_prepared
    from serving.app import create_app
    from serving.runtime import ModelRuntime
    from serving.services import Services

    _log_to_stderr()
    # Bound before anything else starts: a busy port fails in a second, before
    # workers are started or models loaded.
    listener = _listen(settings.server.host, settings.server.port)
    services = Services.open(settings)
    prepared = load_prepared(settings.storage.model_store_dir)
    with services.database.session() as session:
        register_prepared_models(
            session,
            prepared,
            store_dir=settings.storage.model_store_dir,
            prices=settings.router.prices,
        )
    if not prepared:
        console.say("tailor: warning: the model store is empty; run `tailor models prepare`")
    if settings.server.admin_key is None:
        console.say("tailor: note: TAILOR_ADMIN_KEY is unset, so the admin API is closed")
    console.say(
        f"tailor: starting: {len(prepared)} base model(s), database {services.database.safe_url}, "
        f"cache {'redis' if settings.storage.redis_url else 'in-process'}"
    )
    workers = worker_supervisor(settings)
    runtime = ModelRuntime(services, workers=workers)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(services, runtime=runtime),
            log_level="info",
            # uvicorn's default believes X-Forwarded-* from loopback; Tailor
            # only from the proxies named in TAILOR_FORWARDED_ALLOW_IPS.
            proxy_headers=settings.server.forwarded_allow_ips is not None,
            forwarded_allow_ips=settings.server.forwarded_allow_ips or "",
        )
    )
    threading.Thread(
        target=_announce_when_ready,
        args=(server, runtime, settings, console),
        name="ready-announcer",
        daemon=True,
    ).start()
    # Even with no worker here: a job whose worker died is freed when its lease
    # runs out, not when some worker next claims.
    sweeper = lease_sweeper(settings, services)
    sweeper.start()
    if workers is not None:
        workers.start()
    # uvicorn raises the SIGTERM it handled again once the server has shut down,
    # which by default ends the process before the workers are stopped; as a
    # KeyboardInterrupt (what Ctrl-C becomes too) it reaches the finally below.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass
    finally:
        sweeper.stop()
        if workers is not None:
            workers.stop()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ConfigurationError(
            "TAILOR_PORT", f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    listener.listen(2048)
    return listener


def _announce_when_ready(
    server: uvicorn.Server, runtime: ModelRuntime, settings: Settings, console: Console
) -> None:
    """Say "ready" once the socket answers HTTP and every base model is loaded."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    while not runtime.loaded.wait(0.1):
        if runtime.load_error is not None:
            console.say(f"tailor: error: {runtime.load_error} (GET /readyz says so too)")
            return
        if server.should_exit:
            return
    url = f"http://{settings.server.host}:{settings.server.port}"
    log = f"; log {console.log_path}" if console.log_path else ""
    console.say(f"tailor: ready: {url} (dashboard {url}/admin/; {_admin_key_hint(settings)}{log})")


def _admin_key_hint(settings: Settings) -> str:
    if settings.server.admin_key is None:
        return "admin API closed: set TAILOR_ADMIN_KEY"
    if os.environ.get("TAILOR_ADMIN_KEY") or settings.server.admin_key_file is None:
        return "admin key: $TAILOR_ADMIN_KEY"
    return f"admin key in {settings.server.admin_key_file}"


def _serve_on_ray_or_print_config(settings: Settings, *, print_config: bool) -> None:
    from models.catalog import register_prepared_models
    from models.store import load_prepared
    from serving import ray_serve
    from serving.services import Services

    with _one_line_errors():
        services = Services.open(settings)
        prepared = load_prepared(settings.storage.model_store_dir)
        with services.database.session() as session:
            register_prepared_models(
                session,
                prepared,
                store_dir=settings.storage.model_store_dir,
                prices=settings.router.prices,
            )
    model_ids = ray_serve.served_model_ids(settings)
    services.close()
    if print_config:
        import yaml

        typer.echo(yaml.safe_dump(ray_serve.serve_config(settings, model_ids), sort_keys=False))
        return
    _serve_on_ray(settings, model_ids)


@app.command()
def worker(
    name: Annotated[str | None, typer.Option(help="Names this worker in job leases.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Run at most one job, then exit.")] = False,
    parent_pid: Annotated[
        int | None, typer.Option(hidden=True, help="Exit when this process is gone.")
    ] = None,
    check_health: Annotated[
        bool,
        typer.Option(
            "--check-health",
            help="Do not run a worker: exit 0 if the worker of this container touched "
            "TAILOR_FINETUNE_HEARTBEAT_FILE recently, else 1 (a liveness probe).",
        ),
    ] = False,
    max_age: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="With --check-health: how old the heartbeat may be, in seconds; "
            "default TAILOR_FINETUNE_LEASE_SECONDS.",
        ),
    ] = None,
) -> None:
    """Run a fine-tune worker: claim queued jobs, train, evaluate, promote."""
    if check_health:
        _check_worker_health(max_age)
        return
    from finetune.worker import worker_from_settings
    from serving.services import Services
    from serving.settings import load_settings

    _log_to_stderr()
    with _one_line_errors():
        settings = load_settings()
        services = Services.open(settings)
    worker_name = name or f"{socket.gethostname()}:{os.getpid()}"
    fine_tuner = worker_from_settings(
        settings.finetune,
        services.adapters,
        model_store_dir=settings.storage.model_store_dir,
        name=worker_name,
    )
    stop = threading.Event()
    # SIGTERM stops like Ctrl-C: a running job is handed back to the queue.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    if parent_pid is not None:
        threading.Thread(target=_stop_when_orphaned, args=(parent_pid, stop), daemon=True).start()
    typer.echo(f"tailor: fine-tune worker {worker_name} on {fine_tuner.config.torch_device}")
    try:
        if once:
            fine_tuner.run_one()
        else:
            fine_tuner.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        services.close()


def _check_worker_health(max_age: float | None) -> None:
    # Runs every few seconds as a probe: nothing heavy (torch) is imported here.
    from finetune.health import heartbeat_problem
    from serving.settings import load_settings

    with _one_line_errors():
        settings = load_settings()
    path = settings.finetune.heartbeat_file
    if path is None:
        typer.echo("tailor: error: TAILOR_FINETUNE_HEARTBEAT_FILE is unset", err=True)
        raise typer.Exit(2)
    # A worker silent for a whole lease has lost its job by then anyway.
    limit = settings.finetune.lease_seconds if max_age is None else max_age
    problem = heartbeat_problem(path, limit)
    if problem is not None:
        typer.echo(f"tailor: unhealthy: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo("tailor: healthy")


def _stop_when_orphaned(parent_pid: int, stop: threading.Event) -> None:
    # A worker started by `tailor serve` must not outlive it, even if the
    # server was killed without the chance to stop its children.
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def worker_supervisor(settings: Settings) -> WorkerSupervisor | None:
    """The embedded mode's fine-tune workers, as supervised child processes (not
    started yet); None when ``TAILOR_FINETUNE_WORKERS`` is 0.

    Processes, not threads: training holds the GIL and CPU for minutes, and a
    worker that crashes or is killed must not take the API down with it. The
    supervisor reaps and restarts them (``serving.worker_supervisor``).
    """
    from serving.worker_supervisor import WorkerSpec, WorkerSupervisor

    if settings.finetune.workers == 0:
        return None
    specs = []
    for index in range(settings.finetune.workers):
        name = f"worker-{index}"
        # Its own heartbeat file per worker, whatever TAILOR_FINETUNE_HEARTBEAT_FILE
        # says: the supervisor reads it to tell a live worker from a hung one.
        heartbeat = settings.storage.data_dir / "run" / f"finetune-{name}.heartbeat"
        command = (
            sys.executable,
            "-m",
            "serving.cli",
            "worker",
            "--name",
            f"{socket.gethostname()}:{os.getpid()}:{name}",
            "--parent-pid",
            str(os.getpid()),
        )
        env = {**os.environ, "TAILOR_FINETUNE_HEARTBEAT_FILE": str(heartbeat)}
        specs.append(WorkerSpec(name=name, command=command, env=env, heartbeat_file=heartbeat))
    # Silent for a whole lease: the worker's job is lost by then anyway.
    return WorkerSupervisor(specs, heartbeat_max_age_seconds=settings.finetune.lease_seconds)


def lease_sweeper(settings: Settings, services: Services) -> LeaseSweeper:
    from finetune.lease_sweeper import LeaseSweeper, sweep_interval
    from finetune.queue import JobQueue

    queue = JobQueue(
        services.database,
        lease_seconds=settings.finetune.lease_seconds,
        retry_base_seconds=settings.finetune.retry_base_seconds,
    )
    return LeaseSweeper(queue, interval_seconds=sweep_interval(settings.finetune.lease_seconds))


def _serve_on_ray(settings: Settings, model_ids: list[str]) -> None:
    """Start (or join, with RAY_ADDRESS) a Ray cluster and run the application on it."""
    import ray
    from ray import serve as ray_serve_api

    from serving import ray_serve
    from serving.ray_workers import start_finetune_actors, stop_finetune_actors
    from serving.services import Services

    env = ray_serve.tailor_environment(settings, include_secrets=True)
    env["TAILOR_MODELS"] = json.dumps(model_ids)
    ray.init(runtime_env={"env_vars": env}, include_dashboard=False)
    # SIGTERM ends the process through the finally below, so Ray goes down too.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    workers: list[object] = []
    services = Services.open(settings)
    # As in the embedded mode: a dead worker's job is freed when its lease ends.
    sweeper = lease_sweeper(settings, services)
    sweeper.start()
    try:
        ray_serve_api.start(
            http_options={"host": settings.server.host, "port": settings.server.port}
        )
        ray_serve_api.run(
            ray_serve.build_app(), name=ray_serve.APP_NAME, route_prefix="/", blocking=False
        )
        workers = start_finetune_actors(settings)
        typer.echo(
            f"tailor: on Ray Serve with {len(model_ids)} model deployment(s), "
            f"listening on http://{settings.server.host}:{settings.server.port}"
        )
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        sweeper.stop()
        services.close()
        stop_finetune_actors(workers)
        ray_serve_api.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def _raise_keyboard_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@models_app.command("prepare")
def models_prepare(
    force: Annotated[bool, typer.Option(help="Convert again even if already prepared.")] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            help="Only the progress bars; library output goes to <data dir>/log/tailor.log.",
        ),
    ] = False,
) -> None:
    """Fill the model store from the packaged GGUF models (once) and register them."""
    from models.catalog import register_prepared_models
    from models.store import prepare_models, prepare_query_encoder
    from serving.settings import load_settings
    from storage.database import Database
    from storage.migrate import upgrade

    with _one_line_errors():
        settings = load_settings()
    output = quiet_console(log_path(settings)) if quiet else nullcontext(loud_console())
    with _one_line_errors(), output as console:
        started = time.perf_counter()
        console.say(f"tailor: preparing the model store {settings.storage.model_store_dir}")
        prepared = prepare_models(
            settings.storage.model_store_dir, force=force, progress=console.step
        )
        prepare_query_encoder(settings.storage.model_store_dir, force=force, progress=console.step)
        database = Database(settings.storage.resolved_database_url)
        upgrade(database)
        with database.session() as session:
            register_prepared_models(
                session,
                prepared,
                store_dir=settings.storage.model_store_dir,
                prices=settings.router.prices,
            )
        database.dispose()
        total = sum(model.size_bytes for model in prepared)
        console.say(
            f"tailor: model store {settings.storage.model_store_dir}: {len(prepared)} model(s), "
            f"{total / 1e6:.0f} MB, {time.perf_counter() - started:.1f} s"
        )


@models_app.command("list")
def models_list() -> None:
    """List the base models in the model store."""
    from models.catalog import price_per_million_tokens
    from models.store import load_prepared
    from serving.settings import load_settings

    with _one_line_errors():
        settings = load_settings()
        prepared = load_prepared(settings.storage.model_store_dir)
    for model in prepared:
        price = price_per_million_tokens(
            model.id, model.parameter_count, settings.router.prices, model.price
        )
        typer.echo(
            f"{model.id}\t{model.architecture}\t{model.parameter_count / 1e6:.0f}M params\t"
            f"ctx {model.context_length}\t{'chat' if model.chat_template else 'base'}\t"
            f"{price:.4f}/1M tokens\t{model.size_bytes / 1e6:.0f} MB"
        )


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="The model id requests will name.")],
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            help="A directory of a Hugging Face model (safetensors weights, config.json, "
            "tokenizer) or a .gguf file.",
        ),
    ],
    price: Annotated[
        float | None,
        typer.Option(help="Per 1M tokens; default: TAILOR_COST_PER_BILLION_PARAMETERS' rule."),
    ] = None,
    context_length: Annotated[
        int | None, typer.Option(help="At most the model's own; default: the model's own.")
    ] = None,
    chat_template: Annotated[
        Path | None,
        typer.Option(help="A Jinja chat template file to use instead of the model's own."),
    ] = None,
    no_chat_template: Annotated[
        bool,
        typer.Option(
            "--no-chat-template", help="Store it without a chat template (it continues text)."
        ),
    ] = False,
    temperature: Annotated[
        float | None, typer.Option(help="Its default sampling temperature (0 to 2).")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Its default top_p (above 0, up to 1).")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Its default answer length, in tokens.")
    ] = None,
    exist_ok: Annotated[
        bool,
        typer.Option(
            "--exist-ok",
            help="Succeed without copying when NAME was already added from this source "
            "(a deployment hook that runs at every upgrade).",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            help="Only the progress bar; library output goes to <data dir>/log/tailor.log.",
        ),
    ] = False,
) -> None:
    """Add your own base model to the model store and register it; `tailor serve` serves it."""
    from models.catalog import add_base_model
    from models.errors import ModelRefused
    from models.store.add import AddOptions, check_model_id
    from models.store.prepare import NO_CHAT_TEMPLATE, ChatTemplateChoice
    from serving.model_host import check_serves
    from serving.settings import load_settings
    from storage.database import Database
    from storage.migrate import upgrade

    with _one_line_errors():
        settings = load_settings()
        check_model_id(name)  # before any database is opened
        if no_chat_template and chat_template is not None:
            raise ModelRefused("give --chat-template or --no-chat-template, not both")
        template = ChatTemplateChoice()
        if no_chat_template:
            template = NO_CHAT_TEMPLATE
        elif chat_template is not None:
            try:
                text = chat_template.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelRefused(f"--chat-template {chat_template}: {exc}") from None
            template = ChatTemplateChoice(keep_own=False, text=text)
        options = AddOptions(
            chat_template=template,
            context_length=context_length,
            price=price,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
        )
    output = quiet_console(log_path(settings)) if quiet else nullcontext(loud_console())
    with _one_line_errors(), output as console:
        database = Database(settings.storage.resolved_database_url)
        try:
            upgrade(database)
            row = add_base_model(
                database,
                settings.storage.model_store_dir,
                name,
                source,
                options,
                prices=settings.router.prices,
                progress=console.step,
                verify=lambda model_id, path, context: check_serves(
                    model_id, path, context, settings
                ),
                exist_ok=exist_ok,
            )
        finally:
            database.dispose()
        console.say(
            f"tailor: added {row.id} ({row.architecture}, {row.parameter_count / 1e6:.1f}M "
            f"params, ctx {row.context_length}, {'chat' if row.chat_template else 'base'}, "
            f"{row.cost_per_million_tokens:.4f}/1M tokens); `tailor serve` serves it"
        )
        if settings.engine.models is not None and row.id not in settings.engine.models:
            console.say(f"tailor: note: TAILOR_MODELS leaves {row.id} out, so it is not served")


@models_app.command("remove")
def models_remove(
    name: Annotated[str, typer.Argument(help="The id of a model added with `tailor models add`.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Remove it although adapters exist for it: they stay in the database, "
            "unserved, until a model of this name is added again.",
        ),
    ] = False,
) -> None:
    """Remove a model added with `tailor models add` (refused while adapters exist, or jobs
    are queued or running, for it)."""
    from models.catalog import remove_base_model
    from serving.settings import load_settings
    from storage.database import Database
    from storage.migrate import upgrade

    with _one_line_errors():
        settings = load_settings()
        database = Database(settings.storage.resolved_database_url)
        try:
            upgrade(database)
            remove_base_model(database, settings.storage.model_store_dir, name, force=force)
        finally:
            database.dispose()
    typer.echo(f"tailor: removed {name}; a running `tailor serve` serves it until restarted")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the newest revision (keeps all data)."""
    from serving.settings import load_settings
    from storage.database import Database
    from storage.migrate import current_revision, upgrade

    with _one_line_errors():
        database = Database(load_settings().storage.resolved_database_url)
        upgrade(database)
        typer.echo(f"{database.safe_url}: schema at revision {current_revision(database)}")
        database.dispose()


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database."""
    from serving.settings import load_settings
    from storage.database import Database
    from storage.migrate import current_revision, head_revision

    with _one_line_errors():
        database = Database(load_settings().storage.resolved_database_url)
        database.ping()
        current = current_revision(database)
        database.dispose()
    typer.echo(f"current: {current or 'none (empty database)'}; newest: {head_revision()}")


@admin_app.command("create-user")
def admin_create_user(
    name: str,
    admin: Annotated[bool, typer.Option(help="Give the key admin scope as well.")] = False,
) -> None:
    """Create a user and print their first API key (shown this once)."""
    from serving.settings import load_settings
    from storage.database import Database
    from storage.migrate import upgrade
    from storage.repositories import ApiKeyRepository, UserRepository
    from storage.tables import Scope

    with _one_line_errors():
        database = Database(load_settings().storage.resolved_database_url)
        upgrade(database)
        with database.session() as session:
            user = UserRepository(session).create(name=name)
            scopes = [Scope.USER, Scope.ADMIN] if admin else [Scope.USER]
            _key, secret = ApiKeyRepository(session).create(user_id=user.id, scopes=scopes)
        database.dispose()
    typer.echo(f"user {user.id} ({user.name})")
    typer.echo(f"api key (shown once): {secret}")


@router_app.command("eval")
def router_eval(
    data: Annotated[
        Path,
        typer.Option(help="A directory in dcrouter's format (train/test/llm_candidates.json)."),
    ],
    online: Annotated[
        bool,
        typer.Option(
            "--online",
            help="Replay train as live traffic with partial feedback instead (issue 16).",
        ),
    ] = False,
    preference_fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="With --online: share of queries that also get a preference against a "
            "second answer.",
        ),
    ] = 0.1,
) -> None:
    """Evaluate the served router and the baselines offline: quality-cost curve, AIQ, APGR, CPT.

    With --online, replay train through the live router as a stream (only the routed
    answer rated) and score test after every tenth, then the one-user, adversarial-user
    and expert scenarios.
    """
    from router.offline_eval import run_offline_eval
    from router.query_embedder import OnnxQueryEmbedder, use_one_blas_thread
    from serving.settings import load_settings

    if not (data / "train.json").is_file():
        typer.echo(f"tailor: error: {data} holds no train.json", err=True)
        raise typer.Exit(2)
    with _one_line_errors():
        # The service's embedder, from the model store (`tailor models prepare`).
        embedder = OnnxQueryEmbedder.load(load_settings().storage.model_store_dir)
    use_one_blas_thread()
    if not online:
        run_offline_eval(data, embedder, output=typer.echo)
        return
    from router.embeddings import embed_texts
    from router.online_replay import replay_data, run_online_eval
    from router.routing_data import load_routing_data

    routing = load_routing_data(data)
    replay = replay_data(
        routing,
        embed_texts(routing.train_questions, embedder),
        embed_texts(routing.test_questions, embedder),
        embedder.name,
    )
    run_online_eval(replay, preference_fraction=preference_fraction, output=typer.echo)


def main() -> None:
    app(prog_name="tailor")


if __name__ == "__main__":
    main()
