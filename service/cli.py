"""The ``realmqa`` command line: serve, index build, convert-hf, eval, train-reader."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.settings import Settings

log = logging.getLogger("realmqa")


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        for err in e.errors():
            field = ".".join(str(x) for x in err["loc"])
            print(f"realmqa: setting {field} (REALMQA_{field.upper()}): {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(a: argparse.Namespace) -> None:
    import uvicorn

    from service.app import create_app

    settings = _settings(home=a.home, host=a.host, port=a.port, model=a.model)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


def cmd_index_build(a: argparse.Namespace) -> None:
    from index.build import build_index
    from realm_core.model_dir import load_model_dir
    from service.registry import model_versions

    home = Path(a.home)
    name, _, v = a.model.partition("/")
    versions = model_versions(home, name)
    if not versions:
        raise SystemExit(f"realmqa: model {name!r} is not in {home / 'models'}")
    version = int(v) if v else versions[-1]
    model = load_model_dir(home / "models" / name / str(version), name, version)
    m = build_index(model, a.corpus, home / "indexes", a.index, factory=a.factory, batch_size=a.batch_size)
    print(f"{m.name}/{m.version}")


def cmd_convert_hf(a: argparse.Namespace) -> None:
    from index.convert_hf import convert_hf_realm

    c = convert_hf_realm(a.checkpoint, a.home, a.name, max_question_tokens=a.max_question_tokens,
                         chunk_rows=a.chunk_rows)
    print(f"model {c.model_ref}")
    print(f"index {c.index.name}/{c.index.version}")


def cmd_eval(a: argparse.Namespace) -> None:
    from service.evaluate import evaluate, load_questions

    qs = load_questions(a.questions)
    if a.limit:
        qs = qs[: a.limit]
    ks = tuple(int(k) for k in a.k.split(","))
    res = evaluate(a.url, qs, ks, a.model)
    for key, val in res.items():
        print(f"{key:>14}: {val:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="realmqa", description="REALM-style open-domain QA served over HTTP")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the HTTP API (the bundled default without --home)")
    s.add_argument("--home", help="registry home with models/ and indexes/ (env REALMQA_HOME)")
    s.add_argument("--host", help="address to bind (env REALMQA_HOST, default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (env REALMQA_PORT, default 8000)")
    s.add_argument("--model", help="serve only this model (env REALMQA_MODEL)")
    s.set_defaults(func=cmd_serve)

    ix = sub.add_parser("index", help="index commands").add_subparsers(dest="index_command", required=True)
    b = ix.add_parser("build", help="embed a corpus into a new index version and publish it")
    b.add_argument("--home", required=True)
    b.add_argument("--model", required=True, help="model name or name/version whose block embedder embeds")
    b.add_argument("--corpus", required=True, help="JSON Lines of {id, title, text}, optionally gzipped")
    b.add_argument("--index", required=True, help="index name")
    b.add_argument("--factory", default="Flat", help="faiss index_factory string (default Flat: exact MIPS)")
    b.add_argument("--batch-size", type=int, default=64, help="texts per embedding batch")
    b.set_defaults(func=cmd_index_build)

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

    t = sub.add_parser("train-reader", help="fine-tune a reader (see realm_core.train_reader)", add_help=False)
    t.set_defaults(func=None)

    args, rest = p.parse_known_args(argv)
    if args.command == "train-reader":
        from realm_core.train_reader import main as train_main

        train_main(rest)
        return
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.func(args)


if __name__ == "__main__":
    main()
