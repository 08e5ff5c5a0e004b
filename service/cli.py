"""The ``realmqa`` command line: serve, index build / add-bm25 / worker / submit, convert-hf, eval, ask,
train-reader, train-retriever, calibrate-int8."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.client import DEFAULT_URL
from service.settings import CONFIG_FILE_ENV, Settings, env_name, load_settings

log = logging.getLogger("realmqa")


def _settings(config_file: str | None = None, **overrides: Any) -> Settings:
    try:
        return load_settings(Path(config_file) if config_file else None, **overrides)
    except ValidationError as e:
        for err in e.errors():
            field = ".".join(str(x) for x in err["loc"])
            where = f"setting {field} ({env_name(field)})" if field else "settings"
            print(f"realmqa: {where}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as e:  # the config file
        print(f"realmqa: {e}", file=sys.stderr)
        raise SystemExit(2) from None


# Settings with no command-line flag: a secret on the command line shows in ps (environment or file only).
NO_FLAG = frozenset({"admin_token"})
_METAVARS = {"<class 'int'>": "N", "<class 'float'>": "X", "<class 'bool'>": "BOOL", "<class 'pathlib.Path'>": "DIR"}


INDEX_SETTINGS = ("home", "nprobe", "ef_search",
                  *(n for n in Settings.model_fields if n.startswith("index_") and n != "index_poll_interval_s"))
FLAG_ALIASES = {"index_executor": ("--executor",)}  # shorter flags of some settings
WORKER_SETTINGS = (*INDEX_SETTINGS, *(n for n in Settings.model_fields if n.startswith("worker_")))


def _add_setting_flags(p: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One ``--flag`` per setting (or per setting in ``names``), with its environment variable and default in
    the help, and ``--config``."""
    p.add_argument("--config", help=f"config file: .toml, .json or .env (env {CONFIG_FILE_ENV})")
    g = p.add_argument_group("settings (flag > environment > config file > default)")
    for name, f in Settings.model_fields.items():
        if name in NO_FLAG or (names is not None and name not in names):
            continue
        default = f.default if f.default is not None else "none"
        g.add_argument("--" + name.replace("_", "-"), *FLAG_ALIASES.get(name, ()), dest=name,
                       metavar=_METAVARS.get(str(f.annotation), "TEXT"),
                       help=f"{f.description} (env {env_name(name)}, default {default})")


def cmd_serve(a: argparse.Namespace) -> None:
    import asyncio

    import uvicorn

    from service.app import begin_shutdown, create_app
    from service.request_log import configure_logging

    configure_logging()  # JSON lines with request ids; our access line replaces uvicorn's
    settings = _flag_settings(a)
    if settings.workers > 1:
        _serve_workers(settings)
        return
    app = create_app(settings)

    class Server(uvicorn.Server):
        """On SIGTERM/SIGINT the batcher refuses new work and drains within ``shutdown_timeout_s``, while
        uvicorn stops accepting connections and waits for the handlers (a little longer, so that
        requests still queued at the bound get their 503)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                loop = asyncio.get_event_loop()
                loop.call_soon_threadsafe(lambda: loop.create_task(begin_shutdown(app)))
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", log_config=None,
                            access_log=False,
                            timeout_graceful_shutdown=int(settings.shutdown_timeout_s) + 5)
    Server(config).run()


WORKER_SETTINGS_ENV = "REALMQA_WORKER_SETTINGS_JSON"  # the parent's settings, for its --workers processes


def _serve_workers(settings: Settings) -> None:
    """``serve --workers N``: uvicorn's process manager runs N worker processes on one listening socket (the
    kernel spreads connections over them), replaces one that dies and stops them all on SIGTERM/SIGINT (each
    finishes its requests, then drains its batcher). Each worker builds its app from the parent's settings
    (:func:`worker_app`); their metrics go to a directory of prometheus_client's multiprocess mode, removed at
    exit. Exits with uvicorn's start-failure status (3) when a worker could not start (a bad home, a port in use).
    """
    import shutil
    import tempfile

    import uvicorn
    from prometheus_client import multiprocess
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    class Workers(Multiprocess):
        """Marks a worker that died dead for the metrics (its in-flight and queue-depth gauges leave the sums;
        its counters stay) before uvicorn replaces it."""

        failed_start = False

        def keep_subprocess_alive(self) -> None:
            before = {p.pid: p for p in self.processes}
            super().keep_subprocess_alive()
            for pid, p in before.items():
                if p not in self.processes or not p.process.is_alive():
                    if pid is not None:
                        multiprocess.mark_process_dead(pid, metrics_dir)
                    self.failed_start |= p.exitcode == STARTUP_FAILURE

    metrics_dir = tempfile.mkdtemp(prefix="realmqa-metrics-")
    # the admin token as it was given: its file (the worker reads it; given the token too, it would refuse both) or
    # the token itself (model_dump writes a SecretStr as stars)
    payload = settings.model_dump(mode="json", exclude={"admin_token"})
    if settings.admin_token is not None and settings.admin_token_file is None:
        payload["admin_token"] = settings.admin_token.get_secret_value()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client at import, in each worker
    os.environ[WORKER_SETTINGS_ENV] = json.dumps(payload)
    try:
        config = uvicorn.Config("service.cli:worker_app", factory=True, host=settings.host, port=settings.port,
                                workers=settings.workers, log_level="info", log_config=None, access_log=False,
                                timeout_graceful_shutdown=int(settings.shutdown_timeout_s) + 5)
        supervisor = Workers(config, sockets=[config.bind_socket()])
        supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if supervisor.failed_start:
        sys.exit(STARTUP_FAILURE)


def worker_app() -> Any:
    """uvicorn's app factory in a ``serve --workers`` process: the app for the settings its parent passed.

    Raises:
        SystemExit: uvicorn's start-failure status (3) when the settings are missing or do not validate, so the
            parent stops instead of starting the worker again and again (uvicorn exits 1 for a factory that raises,
            and replaces such a worker).
    """
    from uvicorn.config import STARTUP_FAILURE

    from service.app import create_app
    from service.request_log import configure_logging

    configure_logging()
    try:
        # init kwargs, the usual path (over the environment the worker inherited); not model_validate_json,
        # which runs Settings' after-validators twice, and the token-file one refuses its own result
        settings = Settings(**json.loads(os.environ[WORKER_SETTINGS_ENV]))
    except (KeyError, ValueError) as e:  # no settings, not JSON, or not valid (ValidationError is a ValueError)
        logging.getLogger(__name__).error("a --workers process without valid settings from its parent: %s", e)
        sys.exit(STARTUP_FAILURE)
    return create_app(settings)


def _flag_settings(a: argparse.Namespace) -> Settings:
    """Settings from the command's setting flags (those it has), the environment and the config file."""
    return _settings(a.config, **{name: getattr(a, name) for name in Settings.model_fields if hasattr(a, name)})


def cmd_index_build(a: argparse.Namespace) -> None:
    from index.chunks import make_executor
    from index.home import Home
    from index.pipeline import build_from_corpus
    from service.settings import build_options, index_device

    settings = _flag_settings(a)
    home = Home(settings.home)
    try:
        home.resolve_model(a.model)
        options = dataclasses.replace(build_options(settings, a.factory), progress_bar=True)
        options.check()
        executor = make_executor(settings.index_executor, index_device(settings))
    except (LookupError, ValueError, ImportError) as e:  # ImportError: an executor's extra is not installed
        raise SystemExit(f"realmqa: {e}") from None
    print(build_from_corpus(home, a.index, a.model, a.corpus, options, executor).ref)


def cmd_index_verify(a: argparse.Namespace) -> None:
    from index.home import Home, split_ref
    from index.version import IndexVersionError, verify_version

    settings = _flag_settings(a)
    home = Home(settings.home)
    name, version = split_ref(a.index)
    versions = [version] if version is not None else home.index_versions(name)
    bad = 0
    for v in versions:
        try:
            m = verify_version(home.indexes_dir, name, v)
            print(f"{m.ref}: ok ({m.count} blocks, {len(m.checksums)} files re-hashed)")
        except IndexVersionError as e:
            print(f"{name}/{v}: {e}")
            bad += 1
    if bad or not versions:
        raise SystemExit(1)


def cmd_index_add_bm25(a: argparse.Namespace) -> None:
    from index.fusion import FusionConfig
    from index.home import Home
    from index.hybrid import derive_hybrid_version

    try:
        fusion = FusionConfig(rule=a.fusion_rule, weight=a.fusion_weight, depth=a.fusion_depth)
        m = derive_hybrid_version(Home(a.home), a.index, a.version, fusion)
    except (LookupError, ValueError) as e:
        raise SystemExit(f"realmqa: {e}") from None
    print(m.ref)


def cmd_index_worker(a: argparse.Namespace) -> None:
    from index.worker import IndexWorker
    from service.settings import worker_options

    settings = _flag_settings(a)
    worker = IndexWorker(settings.home, worker_options(settings))
    log.info("index worker on %s", settings.home)
    if a.once:
        while worker.run_once():
            pass
        return
    worker.run_forever()


def cmd_index_submit(a: argparse.Namespace) -> None:
    from index.home import Home
    from index.jobs import JobError, submit_job

    settings = _flag_settings(a)
    try:
        job = submit_job(Home(settings.home), a.index, a.model, str(Path(a.corpus).resolve()), a.factory,
                         settings.index_executor)
    except JobError as e:
        raise SystemExit(f"realmqa: {e}") from None
    print(job.id)


def cmd_convert_hf(a: argparse.Namespace) -> None:
    from index.convert_hf import convert_hf_realm

    c = convert_hf_realm(a.checkpoint, a.home, a.name, max_question_tokens=a.max_question_tokens,
                         chunk_rows=a.chunk_rows)
    print(f"model {c.model_ref}")
    print(f"index {c.index.name}/{c.index.version}")


def cmd_eval(a: argparse.Namespace) -> None:
    from service.client import APIError
    from service.evaluate import evaluate, load_questions

    qs = load_questions(a.questions)
    if a.limit:
        qs = qs[: a.limit]
    ks = tuple(int(k) for k in a.k.split(","))
    try:
        res = evaluate(a.url, qs, ks, a.model)
    except APIError as e:
        raise SystemExit(f"realmqa: {a.url}: {e}") from None
    for key, val in res.items():
        print(f"{key:>14}: {val:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


# A sentence ends at . ! or ? (and closing quotes or brackets) followed by space and a capital, digit or quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[A-Z0-9\"“(])")


def sentence_around(text: str, start: int, end: int) -> str:
    """The sentence(s) of ``text`` holding ``text[start:end]``, with the span in [brackets]."""
    bounds = [(m.start(), m.end()) for m in _SENTENCE_END.finditer(text)]
    left = max((e for s, e in bounds if e <= start), default=0)
    right = min((s for s, e in bounds if s >= end), default=len(text))
    return f"{text[left:start]}[{text[start:end]}]{text[end:right]}".strip()


def cmd_ask(a: argparse.Namespace) -> None:
    import httpx

    from service.client import APIError, Client

    try:
        with Client(a.url) as client:
            r = client.answer(a.question, reader_beam_size=a.k)
    except APIError as e:
        raise SystemExit(f"realmqa: {e}") from None
    except httpx.TransportError as e:
        raise SystemExit(f"realmqa: cannot reach {a.url}: {e}") from None
    if a.json:
        print(r.model_dump_json(indent=2))
        return
    print(r.answer)
    print(f"  from: {r.block.title or r.block.id} (block {r.block.id}, relevance score {r.block.score:.3f}, "
          f"score {r.score:.2f})")
    print(f"  {sentence_around(r.block.text, r.start_char, r.end_char)}")
    for c in r.candidates[1:]:
        print(f"  also: {c.answer!r} from {c.block.title or c.block.id} (score {c.score:.2f})")


def cmd_train_retriever(a: argparse.Namespace) -> None:
    import dataclasses

    from index.home import Home, split_ref
    from index.version import open_version
    from realm_core.embedder import Embedder
    from realm_core.model_dir import load_model_dir
    from realm_core.reader_data import load_squad
    from realm_core.train_retriever import options_from_args, train, training_questions, write_model_version

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    home = Home(a.home)
    try:
        name, ver = home.resolve_model(a.model)
        iname, iver = split_ref(a.index)
    except (ValueError, LookupError) as e:
        raise SystemExit(f"realmqa: {e}") from None
    if iver is None:
        raise SystemExit("realmqa: --index takes name/version")
    base = home.model_dir(name, ver)
    model = load_model_dir(base, name, ver)
    iv = open_version(home.indexes_dir, iname, iver)
    table = iv.blocks._table
    block_ids, block_texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    exclude = {art["title"] for art in load_squad(a.exclude)} if a.exclude else set()
    qs = training_questions(load_squad(a.squad), block_ids, block_texts, a.gold_id, exclude)
    if not qs:
        raise SystemExit("realmqa: no training question has a gold block in the index")
    embedder = model.query.embedder
    if embedder is model.block.embedder:  # one embedder did both: train a copy, the block side stays frozen
        embedder = Embedder(embedder.config)
        embedder.load_state_dict(model.query.embedder.state_dict())
    opts = options_from_args(a)
    log.info("%d training questions, %d blocks in %s, base %s: %s", len(qs), len(block_ids), iv.ref, model.ref, opts)
    steps = train(embedder, model.query.tokenizer, iv.index, block_texts, qs, opts, Path(a.work),
                  model.max_question_tokens)
    if a.no_publish:
        return
    card = {"trained_by": "realmqa train-retriever (REALM §3.3/§4.5: query embedder only, index frozen)",
            "base": model.ref, "index": iv.ref, "steps": steps, "questions_seen": steps * opts.batch_size,
            "train_questions": len(qs), "squad": Path(a.squad).name, "options": dataclasses.asdict(opts)}
    out = write_model_version(base, home.models_dir, a.out_model, embedder, model.query.tokenizer, card)
    print(f"{a.out_model}/{out.name}")


def cmd_calibrate_int8(a: argparse.Namespace) -> None:
    from index.home import Home
    from realm_core.int8_calibration import calibrate, calibration_questions, layers_to_keep, publish
    from realm_core.model_dir import load_model_dir
    from realm_core.model_spec import ModelDirError
    from realm_core.precision import Smoothing
    from realm_core.reader_data import load_squad

    if not 0 <= a.alpha <= 1:
        raise SystemExit(f"realmqa: --alpha must be in [0, 1], not {a.alpha}")
    if a.keep_fp32 < 0:
        raise SystemExit(f"realmqa: --keep-fp32 must be at least 0, not {a.keep_fp32}")
    if a.outlier_channels < 0:
        raise SystemExit(f"realmqa: --outlier-channels must be at least 0, not {a.outlier_channels}")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    home = Home(a.home)
    try:
        name, ver = home.resolve_model(a.model)
        base = home.model_dir(name, ver)
        model = load_model_dir(base, name, ver, precision="fp32")
        items = calibration_questions(load_squad(a.squad), a.questions, a.heldout_questions, a.seed)
    except (ValueError, LookupError, OSError) as e:  # ModelDirError is a ValueError
        raise SystemExit(f"realmqa: {e}") from None
    amax = calibrate(model, items)
    try:
        keep, errors = layers_to_keep(model, items, Smoothing(amax, a.alpha), a.keep_fp32, a.activations,
                                      a.outlier_channels)
    except ValueError as e:  # PrecisionError: e.g. more outlier channels than a layer has inputs
        raise SystemExit(f"realmqa: {e}") from None
    kept = ", ".join(f"{n} ({errors[n]:.4f})" for n in keep if n in errors) or "none"
    card = (f"SmoothQuant (arXiv:2211.10438) input ranges of {len(amax)} Linear layers on {len(items)} "
            f"{Path(a.squad).name} training questions with their gold paragraphs (seed {a.seed}, "
            f"{a.heldout_questions} held-out questions' articles left out), alpha {a.alpha}; "
            f"{a.outlier_channels} outlier input channels of each feed-forward output float32; kept float32 besides "
            f"the span head's output, the {a.keep_fp32} int8 layers whose outputs strayed furthest (relative "
            f"error, {a.activations} activations): {kept}; base {model.ref}")
    try:
        out = publish(base, home.models_dir, name, amax, a.alpha, keep, a.activations, a.precision, card,
                      a.outlier_channels)
    except (ModelDirError, OSError) as e:
        raise SystemExit(f"realmqa: {e}") from None
    print(f"{name}/{out.name}")


# commands whose options a realm_core module declares (add_arguments) → (that module, the command here)
LIBRARY_COMMANDS = {"train-retriever": ("realm_core.train_retriever", cmd_train_retriever),
                    "calibrate-int8": ("realm_core.int8_calibration", cmd_calibrate_int8)}


def _add_job_args(p: argparse.ArgumentParser) -> None:
    """The arguments of an index build, shared by ``index build`` (in process) and ``index submit`` (a job)."""
    p.add_argument("--model", required=True, help="model name or name/version whose block embedder embeds")
    p.add_argument("--corpus", required=True, help="JSON Lines of {id, title, text}, optionally gzipped")
    p.add_argument("--index", required=True, help="index name")
    p.add_argument("--factory", default="Flat",
                   help="faiss factory: Flat (default, exact MIPS), IVF{nlist},Flat, IVF{nlist},PQ{m}, HNSW32, "
                        "any faiss index_factory string (IVF/PQ kinds are trained on a sample)")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns eval and worker logs
    p = argparse.ArgumentParser(prog="realmqa", description="REALM-style open-domain QA served over HTTP")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the HTTP API (the bundled default without --home)",
                       description="Serve the HTTP API. Every setting below can also be set by its environment "
                                   "variable or in a config file (TOML or JSON keys = setting names; .env "
                                   "lines = REALMQA_* variables).")
    _add_setting_flags(s)
    s.set_defaults(func=cmd_serve)

    ix = sub.add_parser("index", help="index commands").add_subparsers(dest="index_command", required=True)
    b = ix.add_parser("build", help="embed a corpus into a new index version and publish it")
    _add_job_args(b)
    _add_setting_flags(b, INDEX_SETTINGS)
    b.set_defaults(func=cmd_index_build)

    hb = ix.add_parser("add-bm25", help="publish a hybrid version: an existing version's FAISS index and blocks "
                       "(not embedded again) plus a BM25 part; prints name/version")
    hb.add_argument("--home", required=True)
    hb.add_argument("--index", required=True, help="index name")
    hb.add_argument("--version", type=int, help="version to derive from (default: the newest)")
    hb.add_argument("--fusion-rule", default="normalised_sum", choices=["rrf", "normalised_sum"],
                    help="how dense and BM25 lists are fused (index.fusion)")
    hb.add_argument("--fusion-weight", type=float, default=0.5, help="weight of the dense list, in [0, 1]")
    hb.add_argument("--fusion-depth", type=int, default=100, help="rows taken from each list before fusing")
    hb.set_defaults(func=cmd_index_add_bm25)

    w = ix.add_parser("worker", help="the long-running index worker: runs build jobs from the home's jobs",
                      description="Runs build jobs (from `realmqa index submit` or the service's "
                                  "POST /v1/indexes/{name}/builds): embeds resumably, validates, publishes, and "
                                  "notifies the service with --worker-service-url (token: REALMQA_ADMIN_TOKEN).")
    w.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    _add_setting_flags(w, WORKER_SETTINGS)
    w.set_defaults(func=cmd_index_worker)

    sj = ix.add_parser("submit", help="queue a build job for the index worker; prints its id")
    _add_job_args(sj)
    _add_setting_flags(sj, ("home", "index_executor"))
    sj.set_defaults(func=cmd_index_submit)

    v = ix.add_parser("verify", help="re-hash every file of index versions against their manifests")
    v.add_argument("--index", required=True, help="index name (every version) or name/version")
    _add_setting_flags(v, ("home",))
    v.set_defaults(func=cmd_index_verify)

    c = sub.add_parser("convert-hf", help="turn a Hugging Face REALM checkpoint into a registry model and index")
    c.add_argument("--checkpoint", required=True,
                   help="directory of RealmForOpenQA.save_pretrained + RealmRetriever.save_pretrained "
                        "(block_records.npy is unpickled: use only checkpoints you trust)")
    c.add_argument("--home", required=True, help="registry home to write models/NAME and indexes/NAME into")
    c.add_argument("--name", help="model and index name (default: the checkpoint directory's name)")
    c.add_argument("--max-question-tokens", type=int,
                   help="longest question accepted (default: max_position_embeddings - 2)")
    c.add_argument("--chunk-rows", type=int, default=65536, help="block_emb rows added to the index at a time")
    c.set_defaults(func=cmd_convert_hf)

    e = sub.add_parser("eval", help="EM/F1 and recall@k of a running service")
    e.add_argument("--questions", required=True, help="SQuAD-format JSON or JSON Lines {question, answer}")
    e.add_argument("--url", required=True, help="service base URL, e.g. http://127.0.0.1:8000")
    e.add_argument("--k", default="1,5,20", help="recall@k cut-offs, comma-separated")
    e.add_argument("--limit", type=int, default=0, help="evaluate the first N questions only")
    e.add_argument("--model", help="model to ask (default: the service's default)")
    e.add_argument("--json", help="also write the figures to this file")
    e.set_defaults(func=cmd_eval)

    q = sub.add_parser("ask", help="ask a running service a question; prints the answer and its evidence")
    q.add_argument("question", help="the question")
    q.add_argument("--url", default=DEFAULT_URL, help=f"service base URL (default {DEFAULT_URL})")
    q.add_argument("--k", type=int, help="blocks the reader reads (reader_beam_size; default: the service's)")
    q.add_argument("--json", action="store_true", help="print the /answer response as JSON")
    q.set_defaults(func=cmd_ask)

    tr = sub.add_parser("train-retriever", help="fine-tune the query embedder against a frozen index "
                        "(REALM §3.3/§4.5; see realm_core.train_retriever); publishes a new model version",
                        add_help=False)
    tr.set_defaults(func=None)

    t = sub.add_parser("train-reader", help="fine-tune a reader (see realm_core.train_reader)", add_help=False)
    t.set_defaults(func=None)

    ci = sub.add_parser("calibrate-int8", help="SmoothQuant calibration of a model's int8 reader "
                        "(see realm_core.int8_calibration); publishes a new model version", add_help=False)
    ci.set_defaults(func=None)

    args, rest = p.parse_known_args(argv)
    if args.command in LIBRARY_COMMANDS:  # options declared by the realm_core module the command runs
        import importlib

        module_name, run = LIBRARY_COMMANDS[args.command]
        module = importlib.import_module(module_name)
        lp = argparse.ArgumentParser(prog=f"realmqa {args.command}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(lp)
        run(lp.parse_args(rest))
        return
    if args.command == "train-reader":
        from realm_core.train_reader import main as train_main

        train_main(rest)
        return
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.func(args)


if __name__ == "__main__":
    main()
