"""The `diffusetv` subcommands. Each imports what it needs when it runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from diffusetv.errors import UserError

DEFAULT_MODEL = "emoji32"


def default_model() -> str:
    return os.environ.get("DIFFUSETV_MODEL") or DEFAULT_MODEL


def check_steps(steps: int) -> None:
    """--steps within the bounds every model takes (model_store.bounds; a model may take fewer)."""
    from model_store.bounds import MAX_STEPS, MIN_STEPS

    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise UserError(f"--steps must be in {MIN_STEPS}..{MAX_STEPS} (got {steps})")


def sample(args: argparse.Namespace) -> int:
    from model_store.bounds import MAX_ETA, MAX_SEED, MIN_ETA

    if args.seed is None and args.latent is None:
        raise UserError("--seed is required (unless --latent is given)")
    seed = 0 if args.seed is None else args.seed
    if not 0 <= seed <= MAX_SEED - max(args.n - 1, 0):
        raise UserError(f"--seed must be in 0..2^53-1 (got {args.seed})")
    check_steps(args.steps)
    if not MIN_ETA <= args.eta <= MAX_ETA:
        raise UserError(f"--eta must be in {MIN_ETA:g}..{MAX_ETA:g} (got {args.eta})")
    if not 1 <= args.n <= 1024:
        raise UserError(f"--n must be in 1..1024 (got {args.n})")
    from diffusetv.pictures import check_options, sample_inputs

    check_options(args)
    from app.core.png import encode_png
    from app.core.spec import GenerateSpec
    from diffusion.ddim import last_step
    from diffusion.grid import grid_columns, make_grid

    engine = service_engine(args)
    text = prompt_of(engine.manifest, args.prompt, args.guidance, args.negative_prompt)
    size = size_of(engine.manifest, args.width, args.height)
    inputs = sample_inputs(args, engine.manifest, size)
    # the first sample's spec, as the API's
    spec = GenerateSpec.from_request(args, engine.manifest, **text.fields(), **size, **inputs.fields)
    seeds = list(range(seed, seed + args.n))
    conditions = [engine.condition(spec.prompt, spec.guidance, spec.negative_prompt)] * args.n
    pictures = [inputs.picture] * args.n
    starts = [inputs.picture if inputs.picture is not None else inputs.latent] * args.n
    etas, samplers = [spec.eta] * args.n, [spec.sampler] * args.n
    run = engine.run(
        seeds, spec.steps, etas, starts, conditions=conditions, size=spec.size,
        samplers=samplers,
    )  # fmt: skip
    images = engine.images(last_step(run), pictures)
    parameters = engine.parameters(spec)
    if args.n > 1:
        parameters["n"] = args.n
        pixels = make_grid(images, grid_columns(args.n))
    else:
        pixels = images[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(pixels, parameters))
    m = engine.manifest
    print(f"wrote {out} ({args.n} image{'s' * (args.n > 1)}, {m.ref}, {engine.device}/{engine.precision})")
    return 0


def service_engine(args: argparse.Namespace):
    """The engine of --model on --device at --precision (with --compile), loaded as a worker loads it (its kinds, its
    probe cache, DIFFUSETV_TORCH_THREADS), its steps checked against the model's bound."""
    from model_store import Store, kinds
    from worker.engine import load_engine

    if os.environ.get("DIFFUSETV_TORCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["DIFFUSETV_TORCH_THREADS"]))
    service = settings()
    kinds.load_modules(service.extra_kind_modules)
    manifest = Store().resolve(args.model or default_model())
    check_sampler(manifest, args.sampler)
    bound = kinds.served(manifest).steps_bound(manifest, args.sampler)
    if args.steps > bound:
        raise UserError(f"--steps: {manifest.ref} runs at most {bound} steps with {args.sampler} (got {args.steps})")
    return load_engine(
        args.model or default_model(),
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        probe_cache=service.probe_cache,
    )


def check_sampler(manifest, sampler: str) -> None:
    """--sampler on a model that cannot run it: a one-line error (model_store.kinds.Kind.refuse_sampler)."""
    from model_store import kinds

    refused = kinds.of(manifest).refuse_sampler(manifest, sampler)
    if refused is not None:
        raise UserError(f"--sampler {sampler}: {refused}")


def prompt_of(manifest, prompt: str | None, guidance: float | None, negative: str | None = None):
    """--prompt, --guidance and --negative-prompt, normalised and defaulted as the API does (the kind's rules,
    model_store.kinds.Kind.prompts)."""
    from model_store import kinds
    from model_store.text import NO_TEXT, PromptError

    kind = kinds.of(manifest)
    if negative is not None and "negative_prompt" not in kind.fields:
        raise UserError(f"{manifest.ref} (kind {manifest.kind!r}) takes no --negative-prompt")
    if kind.prompts is None:
        if prompt is not None or guidance is not None:
            raise UserError(f"{manifest.ref} (kind {manifest.kind!r}) takes no --prompt or --guidance")
        return NO_TEXT
    try:
        text = kind.prompts(manifest, prompt, guidance, negative, "prompt")
    except PromptError as exc:
        raise UserError(f"--{exc.field.replace('_', '-')}: {exc}") from None
    if text.ignored:
        print(f"words not known to {manifest.ref}, ignored: {', '.join(text.ignored)}", file=sys.stderr)
    if text.truncated_tokens:
        print(f"the prompt is {text.truncated_tokens} tokens too long for {manifest.ref}: truncated", file=sys.stderr)
    return text


def size_of(manifest, width: int | None, height: int | None) -> dict[str, int]:
    """--width and --height, defaulted to the model's default size for a model of several sizes, as the API does."""
    from model_store import kinds

    try:
        return kinds.of(manifest).size_fields(manifest, width, height)
    except kinds.SizeError as exc:
        raise UserError(f"--width/--height: {exc}") from None


def train(args: argparse.Namespace) -> int:
    from diffusion.train import TrainConfig
    from diffusion.train import train as run_training

    widths = tuple(int(w) for w in args.widths.split(","))
    init = warm_start_weights(args.init) if args.init else None
    cfg = TrainConfig(
        data=args.data,
        steps=args.steps,
        image_size=args.image_size,
        batch_size=args.batch_size,
        widths=widths,
        block_depth=args.block_depth,
        schedule=args.schedule,
        learning_rate=args.lr,
        lr_decay=args.lr_decay,
        p2_gamma=args.p2_gamma,
        p2_k=args.p2_k,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        text_tokens=args.text_tokens,
        text_dims=args.text_dims,
        prompt_dropout=args.prompt_dropout,
        init=init["ref"] if init else None,
        recipe={"command": "diffusetv " + " ".join(sys.argv[1:])},
    )
    prompts, vocabulary = caption_prompts(args.data, args.text_tokens) if args.text_tokens else (None, None)
    state = run_training(cfg, args.out, resume=args.resume, prompts=prompts, vocabulary=vocabulary, init=init)
    print(f"{args.out}: trained to step {state.step} ({state.elapsed_s:.0f} s of training)")
    return 0


def warm_start_weights(ref: str) -> dict:
    """A store model's verified weights and input statistics, for `train --init`."""
    from model_store import Store
    from model_store.weights import read_state

    manifest = Store().resolve(ref)
    state = read_state(manifest, manifest.kind)  # a text model's prompt layers carry over; a misfit is refused

    ref = f"{manifest.ref} sha256:{manifest.digest}"
    return {"ref": ref, "state": state, "mean": manifest.mean, "std": manifest.std}


def caption_prompts(data: str, tokens: int):
    """The word ids of the training captions of an .npz, and the vocabulary built from them."""
    import numpy as np

    from diffusion.data import load_captions
    from model_store.vocabulary import Vocabulary

    captions = load_captions(Path(data))
    vocabulary = Vocabulary.build(captions, tokens)
    return np.array([vocabulary.encode(c).tokens for c in captions], dtype=np.int64), vocabulary.to_dict()


def run_captions(run_dir: Path) -> list[str] | None:
    """The training captions of a prompt-conditioned run (from its data), for the model's suggestions."""
    import json

    from diffusion.data import load_captions

    run_file = run_dir / "run.json"
    if not run_file.is_file():
        return None  # publish_run says what is missing
    run = json.loads(run_file.read_text())
    if "vocabulary" not in run:
        return None
    return load_captions(Path(run["data"]["path"]))


def publish(args: argparse.Namespace) -> int:
    from model_store import Store
    from model_store.weights import publish_run

    run_dir = Path(args.run_dir)
    captions = run_captions(run_dir)
    manifest = publish_run(Store(), run_dir, args.name, captions, args.default_guidance)
    print(f"published {manifest.ref} ({manifest.digest[:12]}) to {manifest.path}")
    return 0


def models(args: argparse.Namespace) -> int:
    from model_store import Store

    store = Store()
    refs = store.refs()
    if not refs:  # a typo in DIFFUSETV_MODEL_STORE must not read as "all verified"
        where = "no folder" if not any(root.is_dir() for root in store.roots) else "no models"
        raise UserError(f"{where} at {store.where()}: set DIFFUSETV_MODEL_STORE to a model store (or unset it)")
    if args.action == "verify":
        for ref in refs:
            manifest = store.verify(ref)
            print(f"ok  {ref}  sha256:{manifest.digest}")
        print(f"{len(refs)} model(s) verified in {store.where()}")
        return 0
    default = default_model()
    rows = store.list()
    if not any(default in (m.name, m.ref) for m in rows):
        print(f"warning: the default model DIFFUSETV_MODEL={default} is not in {store.where()}", file=sys.stderr)
    for m in rows:
        latest = store.versions(m.name)[-1] == m.version
        mark = " (default)" if (latest and default in (m.name, m.ref)) or default == m.ref else ""
        print(f"{m.ref:24} {describe(m)}  sha256:{m.digest[:12]}{mark}")
    return 0


def describe(manifest) -> str:
    """`KIND HxWxC`, with `(stored, not served)` for a stored-only kind and `(unknown kind)` for others."""
    from model_store import ModelStoreError, kinds

    try:
        kind = kinds.of(manifest)
    except ModelStoreError:
        return f"{manifest.kind} (unknown kind)"
    height, width, channels = kind.shape(manifest.config)
    return f"{kind.name:12} {height}x{width}x{channels}" + ("" if kind.served else "  (stored, not served)")


def data(args: argparse.Namespace) -> int:
    from diffusion import emoji

    arrays = emoji.write(args.out, args.font or emoji.DEFAULT_FONT, args.size)
    print(
        f"wrote {args.out}: {len(arrays['train'])} train + {len(arrays['heldout'])} held-out images "
        f"of {args.size}x{args.size}"
    )
    return 0


def setting_problem(error: dict) -> str:
    """`DIFFUSETV_NAME: what is wrong`; checks across settings name their variables in their own message."""
    message = error["msg"].removeprefix("Value error, ")
    return f"DIFFUSETV_{'_'.join(map(str, error['loc'])).upper()}: {message}" if error["loc"] else message


def settings(**overrides):
    """The validated service settings; an invalid environment is a one-line error."""
    from pydantic import ValidationError

    from app.core.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(setting_problem(e) for e in exc.errors())
        raise UserError(f"invalid settings: {problems}") from None


HEALTH_PATHS = ("/healthz", "/readyz")


def quiet_health_checks(record: logging.LogRecord) -> bool:
    """Access-log filter: no line for health and readiness probes (uvicorn's args: client, method, path, ...)."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not (len(args) >= 3 and str(args[2]).split("?", 1)[0] in HEALTH_PATHS)


def api(args: argparse.Namespace) -> int:
    import functools

    import uvicorn

    s = settings(host=args.host, port=args.port)
    refused = s.exposure_problem()
    if refused:
        raise UserError(refused)
    from app.connections import HeadDeadline
    from app.main import create_app

    logging.getLogger("uvicorn.access").addFilter(quiet_health_checks)
    log_config = uvicorn.config.LOGGING_CONFIG
    if s.log_format == "json":  # uvicorn's loggers propagate to the root logger's JSON handler instead
        from app.core.logs import configure_logging

        configure_logging("json")
        log_config = None
    uvicorn.run(
        create_app(s),
        host=s.host,
        port=s.port,
        log_level="info",
        log_config=log_config,
        timeout_graceful_shutdown=5,
        proxy_headers=False,  # X-Forwarded-For is the app's to judge (DIFFUSETV_TRUSTED_PROXIES, app/clients.py)
        forwarded_allow_ips="",
        http=functools.partial(HeadDeadline, timeout_s=s.header_timeout_s),  # h11, with a deadline for each head
    )
    return 0


def stop_during_start_up(signum, frame) -> None:
    """SIGTERM before RQ's loop takes over (model load, waiting for Redis): nothing is running, so exit now."""
    print("diffusetv worker: SIGTERM during start-up; exiting", file=sys.stderr)
    raise SystemExit(0)


def worker(args: argparse.Namespace) -> int:
    # First, before torch is imported: as PID 1 in a container, a signal without a handler is ignored, so
    # `docker stop` during the model load would wait out the whole grace period. RQ's loop later installs
    # its own handler (finish the batch, then exit).
    import signal

    signal.signal(signal.SIGTERM, stop_during_start_up)
    if args.check:
        return worker_check()
    from worker.heartbeat import EngineConflict
    from worker.main import run

    s = settings()
    try:
        return run(s, models=args.model, burst=args.burst)
    except EngineConflict as exc:
        raise UserError(str(exc)) from None


def notifier(args: argparse.Namespace) -> int:
    """`diffusetv notifier`: send the webhook deliveries due in Redis, until SIGTERM (notifier/main.py)."""
    from notifier.main import run

    return run(settings())


def webhook_secret(args: argparse.Namespace) -> int:
    """A fresh `whsec_…` secret, for DIFFUSETV_WEBHOOK_SECRET or an owner's entry in DIFFUSETV_WEBHOOK_SECRETS_FILE."""
    from app.core.signing import new_secret

    print(new_secret())
    return 0


def owner(args: argparse.Namespace) -> int:
    """The owner id (app.auth.owner_id) of the API key on stdin: the key of its entry in WEBHOOK_SECRETS_FILE."""
    from app.auth import owner_id

    key = sys.stdin.readline().strip()
    if not key:
        raise UserError("write the API key on stdin, e.g. `diffusetv owner < key.txt`")
    print(owner_id(key))
    return 0


def every_served_model() -> str | None:
    """The local stack's default: the default model, then every other model of the store that a worker can serve,
    newest versions (the user store's and the bundled emoji32 and emoji32-text)."""
    from app.models import every_served

    s = settings()
    return ",".join(every_served(s.store(), s.model)) or None


def worker_check() -> int:
    """`diffusetv worker --check`: 0 when the worker's main loop is within its deadline (worker/health.py)."""
    from worker.health import problem

    found = problem(settings().health_file)
    print(found or "ok", file=sys.stderr if found else sys.stdout)
    return 1 if found else 0


def up(args: argparse.Namespace) -> int:
    from diffusetv.up import up as run_up

    models = ",".join(args.model) if args.model else None
    if models is None and not os.environ.get("DIFFUSETV_MODELS"):
        models = every_served_model()
    refused = settings(host=args.host, port=args.port, models=models).exposure_problem()
    if refused:
        raise UserError(refused)
    return run_up(args.host, args.port, models)


def features(args: argparse.Namespace) -> int:
    import time

    import torch
    from tqdm import tqdm

    from diffusion.data import load_npz
    from diffusion.features import OBJECTIVE, train_feature_extractor
    from model_store import Store
    from model_store.features import save_feature_net

    if args.steps < 1:
        raise UserError(f"--steps must be >= 1 (got {args.steps})")
    images = load_npz(Path(args.data), "train")
    started = time.perf_counter()
    with tqdm(total=args.steps, unit="step", dynamic_ncols=True) as bar:

        def progress(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        net = train_feature_extractor(images, args.steps, args.seed, progress=progress)
    elapsed = time.perf_counter() - started
    training = {
        "command": "diffusetv " + " ".join(sys.argv[1:]),
        "data": {"path": str(args.data), "split": "train", "images": len(images)},
        "steps": args.steps,
        "seed": args.seed,
        "objective": OBJECTIVE,
        "features": "global average pool of the last convolution (post-ReLU, not L2-normalised)",
        "elapsed_s": round(elapsed, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    manifest = save_feature_net(Store(), args.name, net, training)
    print(f"published {manifest.ref} ({manifest.digest[:12]}) to {manifest.path} after {elapsed:.0f} s of training")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    import json

    if not 2 <= args.n <= 100_000:
        raise UserError(f"--n must be in 2..100000 (got {args.n})")
    check_steps(args.steps)
    if args.subsets < 1:
        raise UserError(f"--subsets must be >= 1 (got {args.subsets})")
    from diffusion import evaluate as ev
    from diffusion.data import load_npz
    from diffusion.features import FeatureError
    from model_store.features import load_extractor
    from worker.engine import load_engine

    train, heldout = load_npz(Path(args.data), "train"), load_npz(Path(args.data), "heldout")
    try:
        extractor = load_extractor(args.features)
    except FeatureError as exc:
        raise UserError(str(exc)) from None
    engine = load_engine(args.model or default_model(), device=args.device)
    m = engine.manifest
    check_sampler(m, args.sampler)
    untrained = ev.untrained_generator(m.config, m.mean, m.std, m.schedule, args.steps, args.seed, engine.device)
    try:
        result = ev.evaluate(
            lambda seeds: engine.generate(seeds, args.steps, [0.0] * len(seeds), samplers=[args.sampler] * len(seeds)),
            untrained,
            extractor.extract,
            train,
            heldout,
            args.n,
            seed=args.seed,
            model_label=f"{m.ref} ({args.sampler}, {args.steps} steps)",
            features=extractor.name,
            subsets=args.subsets,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    figures = {"model": m.ref, "digest": m.digest, "sampler": args.sampler, "steps": args.steps, "seed": args.seed}
    figures |= result.to_json()
    text = prompt_figures(engine, extractor, train, heldout, args) if engine.model.conditioned else None
    if text is not None:
        text.pop("samples")
        figures["prompts"] = text
        if args.picture:
            write_picture(engine, args.picture, args.steps, text["guidance"], args.sampler)
    if args.json:
        print(json.dumps(figures))
    else:
        print(ev.format_table(result))
        if text is not None:
            from diffusion.prompt_eval import format_prompts

            print(f"\nguidance {text['guidance']}, {args.sampler}, {args.steps} steps, eta 0")
            print(format_prompts(text))
    return 0


PICTURE_PROMPTS = ("red heart", "blue heart", "cat face", "dog face", "grinning face", "red apple", "sun", "fire")
PICTURE_SEEDS = 6


def write_picture(engine, path: str, steps: int, guidance: float, sampler: str) -> None:
    """The README's picture: prompts (rows) x seeds (columns), a labelled PNG."""
    import numpy as np

    from app.core.png import encode_png
    from diffusion.grid import make_grid
    from model_store.samplers import DEFAULT_SAMPLER

    rows = []
    for prompt in PICTURE_PROMPTS:
        condition = engine.condition(prompt, guidance)
        seeds = list(range(PICTURE_SEEDS))
        conditions, samplers = [condition] * len(seeds), [sampler] * len(seeds)
        rows.append(engine.generate(seeds, steps, [0.0] * len(seeds), conditions, samplers=samplers))
    grid = make_grid(np.concatenate(rows), cols=PICTURE_SEEDS)
    named = {} if sampler == DEFAULT_SAMPLER else {"sampler": sampler}  # as a spec names a defaulted field
    parameters = {"prompts": list(PICTURE_PROMPTS), "seeds": seeds, "steps": steps, "guidance": guidance,
                  **named, **engine.model_parameters()}  # fmt: skip
    Path(path).write_bytes(encode_png(grid, parameters))
    print(f"wrote {path}: {len(PICTURE_PROMPTS)} prompts x {PICTURE_SEEDS} seeds", file=sys.stderr)


def prompt_figures(engine, extractor, train, heldout, args) -> dict:
    """A text model's prompt adherence, colour adherence and prompted KID (diffusion.prompt_eval), at its default
    guidance unless --guidance."""
    from diffusion.data import load_captions
    from diffusion.prompt_eval import evaluate_prompts
    from model_store.text import TextSpec

    guidance = args.guidance if args.guidance is not None else TextSpec.of(engine.manifest).default_guidance
    data = Path(args.data)

    def generate(captions, seeds):
        conditions = [engine.condition(c, guidance) for c in captions]
        return engine.generate(seeds, args.steps, [0.0] * len(seeds), conditions, samplers=[args.sampler] * len(seeds))

    text = evaluate_prompts(
        generate, extractor.extract, train, heldout, load_captions(data, "train"), load_captions(data, "heldout"),
        train_subset=args.prompt_subset, seed=args.seed, subsets=args.subsets,
    )  # fmt: skip
    return {"guidance": guidance, **text}


def bench(args: argparse.Namespace) -> int:
    """`python -m bench` with the same arguments, in a child process; its exit status is ours."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("bench") is None:
        raise UserError("the `bench` package is not installed here: reinstall diffusetv (pip install -e .)")
    return subprocess.run([sys.executable, "-m", "bench", *args.bench_args]).returncode
