"""``jupyterhub-credits``: the ledger from the command line (admin operations), and the
local environments of the catalog's images (``envs build``, ``envs list``).

Exit codes are a contract: 0 done, 1 refused (insufficient funds, unknown
account, a failed invariant, a failed build...), 2 usage error (bad arguments or input).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, envs
from .catalog import CatalogError, load_catalog
from .ledger import Ledger, LedgerError, account_name, parse_amount
from .ledger import database
from .ledger.amounts import InvalidAmount, format_amount
from .ledger.errors import InvalidRequest
from .ledger.operations import MAX_DAYS, apply_stream, result_line
from .ledger.export import csv_chunks
from .ledger.records import balance_to_dict, transfer_to_dict
from .ledger.verify import verify

DB_ENV = "JUPYTERHUB_CREDITS_DB_URL"
CATALOG_ENV = "JUPYTERHUB_CREDITS_CATALOG"
DEFAULT_CATALOG = "config/catalog.yaml"  # the spawner's default too (relative: to the cwd)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def now() -> datetime:
    """The CLI's clock (tests replace it)."""
    return datetime.now(timezone.utc)


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


def _amount(text: str) -> int:
    try:
        return parse_amount(text)
    except InvalidAmount as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of days: {text!r}") from None
    if not 0 < days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"days must be between 0 and {MAX_DAYS}, not {text}")
    return days


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, not {value}")
    return value


def _since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid ISO 8601 time {text!r} (e.g. 2026-01-31 or 2026-01-31T12:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _account(text: str) -> str:
    try:
        return account_name(text)
    except InvalidRequest as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyterhub-credits",
        description="Administer the jupyterhub-credits ledger. Amounts are decimal credits "
                    "(\"12.5\"). USER is a user name, or group:NAME for a group pool.")
    parser.add_argument("--db", metavar="URL",
                        help=f"database URL (default: ${DB_ENV}, else {database.DEFAULT_URL})")
    parser.add_argument("--actor", help="who is acting, for the audit log (default: cli:$USER)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, help_text):
        return commands.add_parser(name, help=help_text, description=help_text)

    grant = command("grant", "issue credits to a user or group")
    grant.add_argument("user", metavar="USER", type=_account)
    grant.add_argument("amount", metavar="AMOUNT", type=_amount)
    grant.add_argument("--reason", required=True)
    grant.add_argument("--key", help="idempotency key (default: a new random key)")
    grant.add_argument("--expires-in", metavar="DAYS", type=_days, dest="expires_in")
    grant.add_argument("--json", action="store_true")

    deduct = command("deduct", "take credits away from a user or group")
    deduct.add_argument("user", metavar="USER", type=_account)
    deduct.add_argument("amount", metavar="AMOUNT", type=_amount)
    deduct.add_argument("--reason", required=True)
    deduct.add_argument("--key")
    deduct.add_argument("--json", action="store_true")

    balance = command("balance", "show an account's balance")
    balance.add_argument("user", metavar="USER", type=_account)
    balance.add_argument("--json", action="store_true")

    history = command("history", "show an account's transfers, newest first")
    history.add_argument("user", metavar="USER", type=_account)
    history.add_argument("--json", action="store_true")
    history.add_argument("--limit", type=_positive_int, default=50)

    reverse = command("reverse", "undo a transfer with a new, opposite one")
    reverse.add_argument("transfer", metavar="TRANSFER_ID", type=_positive_int)
    reverse.add_argument("--reason", required=True)
    reverse.add_argument("--key")
    reverse.add_argument("--json", action="store_true")

    apply = command("apply", "apply JSON-lines operations from FILE (- for stdin)")
    apply.add_argument("file", metavar="FILE")

    sweep = command("sweep", "void timed-out holds and expire lapsed credits")
    sweep.add_argument("--json", action="store_true")

    check = command("verify", "check every ledger invariant (exit 0 only when all hold)")
    check.add_argument("--json", action="store_true")

    export = command("export", "write the transfer log as CSV to stdout")
    export.add_argument("--since", type=_since, metavar="ISO")

    _add_envs_commands(command("envs", "local environments of the catalog's images (one "
                                        "GPU machine: what the local spawners run)"))

    db = command("db", "database schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_commands.add_parser("upgrade", help="migrate the schema to the latest version")
    db_commands.add_parser("current", help="print the schema revision")
    return parser


def _add_envs_commands(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="envs_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--catalog", metavar="PATH",
                        help=f"the hub's catalog (default: ${CATALOG_ENV}, else {DEFAULT_CATALOG})")
    common.add_argument("--envs-dir", metavar="DIR", dest="envs_dir",
                        help=f"where the environments are, as CreditsLocalProcessSpawner.envs_dir "
                             f"(default: ${envs.ENVS_DIR_ENV}, else {envs.DEFAULT_ENVS_DIR})")
    common.add_argument("--requirements-dir", metavar="DIR", dest="requirements_dir",
                        help="pinned requirements as DIR/<image id>.txt (default: the ones "
                             "shipped with jupyterhub-credits)")
    flavour = common.add_mutually_exclusive_group()
    flavour.add_argument("--gpu", dest="gpu", action="store_true", default=None,
                         help="install TensorFlow for GPUs (tensorflow[and-cuda]) whatever "
                              "this machine has")
    flavour.add_argument("--cpu", dest="gpu", action="store_false",
                         help="install the CPU build (tensorflow-cpu) whatever this machine has")

    build = actions.add_parser(
        "build", parents=[common],
        help="build the environments of IMAGEs (default: every catalog image)",
        description="Build each image's environment from its pinned requirements, with "
                    "tensorflow[and-cuda] where this machine has GPUs (NVML, or "
                    "$JUPYTERHUB_CREDITS_LOCAL_GPUS) and tensorflow-cpu otherwise, then "
                    "jupyterhub-credits itself. An environment already built from the same "
                    "pins is kept (--force rebuilds it). pip's own configuration applies "
                    "(PIP_INDEX_URL, PIP_FIND_LINKS, pip.conf).")
    build.add_argument("images", metavar="IMAGE", nargs="*")
    build.add_argument("--package", metavar="SPEC",
                       help="what pip installs as jupyterhub-credits (default: this one's "
                            "source directory or wheel when installed from one, else "
                            f"jupyterhub-credits=={__version__})")
    build.add_argument("--python", metavar="PATH", default=sys.executable,
                       help="the Python the environments are made with (default: this one, "
                            "%(default)s)")
    build.add_argument("--force", action="store_true", help="rebuild environments that are "
                                                            "already built")
    build.add_argument("--verbose", action="store_true", help="show pip's output")

    listing = actions.add_parser("list", parents=[common],
                                 help="show every catalog image's environment and its state")
    listing.add_argument("--json", action="store_true")


def _print_json(value) -> None:
    print(json.dumps(value, indent=None))


def _report_transfer(args, result, verb: str) -> None:
    if args.json:
        _print_json(result_line(result.transfer.key, result))
        return
    transfer = result.transfer
    note = " (already applied earlier with this key)" if result.duplicate else ""
    print(f"transfer {transfer.id}: {verb} {transfer_to_dict(transfer)['amount']} credits"
          f" ({transfer.debit_account} -> {transfer.credit_account}){note}")


def run(args, ledger: Ledger, actor: str) -> int:
    key = getattr(args, "key", None) or f"cli:{uuid.uuid4()}"
    if args.command == "grant":
        expires_at = None
        if args.expires_in is not None:
            expires_at = ledger.clock() + timedelta(days=args.expires_in)
        result = ledger.grant(args.user, args.amount, key=key, reason=args.reason, actor=actor,
                              expires_at=expires_at)
        _report_transfer(args, result, "granted")
    elif args.command == "deduct":
        result = ledger.deduct(args.user, args.amount, key=key, reason=args.reason, actor=actor)
        _report_transfer(args, result, "deducted")
    elif args.command == "reverse":
        result = ledger.reverse(args.transfer, key=key, reason=args.reason, actor=actor)
        _report_transfer(args, result, "reversed")
    elif args.command == "balance":
        record = balance_to_dict(ledger.balance(args.user))
        if args.json:
            record.pop("units")
            _print_json(record)
        else:
            print(f"{record['account']}: available {record['available']}, "
                  f"reserved {record['reserved']}, total {record['total']}")
    elif args.command == "history":
        records = [transfer_to_dict(t, account=args.user)
                   for t in ledger.history(args.user, limit=args.limit)]
        if args.json:
            _print_json(records)
        else:
            for r in records:
                other = r["debit"] if r["credit"] == args.user else r["credit"]
                print(f"{r['id']:>8}  {r['created_at']}  {r['kind']:<8} {r['change']:>12}  "
                      f"{other:<20} {r['reason']}")
    elif args.command == "apply":
        return _apply(args, ledger, actor)
    elif args.command == "sweep":
        report = ledger.sweep(actor=actor)
        record = {"holds_voided": len(report.holds_voided),
                  "lots_expired": len(report.lots_expired),
                  "expired": format_amount(report.expired_units)}
        _print_json(record) if args.json else print(
            f"voided {record['holds_voided']} timed-out holds; expired {record['expired']} "
            f"credits from {record['lots_expired']} lots")
    elif args.command == "verify":
        report = verify(ledger.engine)
        if args.json:
            _print_json(report.to_dict())
        else:
            for name, check in report.checks.items():
                print(f"{'ok  ' if check.ok else 'FAIL'} {name}"
                      + ("" if check.ok else f" ({check.problems} problems)"))
                for example in check.examples:
                    print(f"       {example}")
            print(f"{report.transfers} transfers, {report.accounts} accounts checked "
                  f"in {report.seconds:.2f} s")
        return EXIT_OK if report.ok else EXIT_REFUSED
    elif args.command == "export":
        # The admin panel's export, cells defused: a spreadsheet never runs a reason.
        for chunk in csv_chunks(ledger, since=args.since):
            sys.stdout.write(chunk)
    return EXIT_OK


def _apply(args, ledger: Ledger, actor: str) -> int:
    if args.file == "-":
        failures = apply_stream(ledger, sys.stdin, sys.stdout, actor=actor)
    else:
        try:
            source = open(args.file, encoding="utf-8")
        except OSError as error:
            raise UsageError(f"cannot read {args.file}: {error.strerror}") from None
        with source:
            failures = apply_stream(ledger, source, sys.stdout, actor=actor)
    return EXIT_REFUSED if failures else EXIT_OK


def envs_main(args) -> int:
    """``envs build`` and ``envs list`` (no database needed)."""
    catalog_path = args.catalog or os.environ.get(CATALOG_ENV) or DEFAULT_CATALOG
    try:
        catalog = load_catalog(catalog_path)
    except CatalogError as error:
        raise UsageError(f"{error} (choose the hub's catalog with --catalog or "
                         f"${CATALOG_ENV})") from None
    envs_dir = Path(args.envs_dir or envs.default_envs_dir()).absolute()
    gpu = envs.machine_has_gpus() if args.gpu is None else args.gpu
    if args.envs_command == "list":
        states = [_state(catalog, image_id, envs_dir, args.requirements_dir, gpu)
                  for image_id in catalog.images]
        if args.json:
            _print_json([state.to_dict() for state in states])
        else:
            _print_states(states, envs_dir)
        return EXIT_OK
    return _build(args, catalog, envs_dir, gpu)


def _state(catalog, image_id, envs_dir, requirements_dir, machine_gpu) -> envs.EnvironmentState:
    try:
        expected = _requirements(catalog, image_id, requirements_dir, machine_gpu).expected
    except envs.PinsError as error:
        state = envs.environment_state(image_id, envs_dir / image_id)
        return envs.EnvironmentState(**{**state.to_dict(), "problem": str(error)})
    return envs.environment_state(image_id, envs_dir / image_id, expected)


def _requirements(catalog, image_id, requirements_dir, machine_gpu) -> envs.Requirements:
    # A CPU-only image gets the CPU build even on a GPU machine.
    gpu = machine_gpu and not catalog.images[image_id].cpu_only
    path = envs.pinned_requirements(image_id, requirements_dir)
    return envs.requirements_for(path, gpu=gpu)


def _print_states(states, envs_dir: Path) -> None:
    width = max(len(state.image) for state in states)
    print(f"{'IMAGE':<{width}}  {'STATE':<7}  {'TENSORFLOW':<10}  PATH")
    for state in states:
        print(f"{state.image:<{width}}  {state.state:<7}  {state.tensorflow or '-':<10}  "
              f"{state.path}")
        if state.problem:
            print(f"{'':<{width}}  ({state.problem})")
        if state.state != envs.BUILT:
            print(f"{'':<{width}}  build it: {envs.build_command(state.image, envs_dir)}")


def _build(args, catalog, envs_dir: Path, machine_gpu: bool) -> int:
    by_folded = {image_id.casefold(): image_id for image_id in catalog.images}
    unknown = [name for name in args.images if name.casefold() not in by_folded]
    if unknown:
        raise UsageError(f"unknown image {', '.join(map(repr, unknown))}; the catalog "
                         f"{catalog.source} has: {', '.join(catalog.images)}")
    image_ids = list(dict.fromkeys(by_folded[name.casefold()] for name in args.images))
    package = args.package or envs.this_package_source()
    failed = 0
    for image_id in image_ids or list(catalog.images):
        def echo(line, image_id=image_id):
            print(f"{image_id}: {line}", flush=True)

        try:
            requirements = _requirements(catalog, image_id, args.requirements_dir, machine_gpu)
        except envs.PinsError as error:
            print(f"jupyterhub-credits: {image_id}: {error}", file=sys.stderr)
            failed += 1
            continue
        state = envs.environment_state(image_id, envs_dir / image_id, requirements.expected)
        if state.state == envs.BUILT and not args.force:
            echo(f"already built from these pins ({requirements.tensorflow}): kept "
                 "(--force rebuilds it)")
            continue
        try:
            build = envs.build_environment(image_id, requirements, envs_dir, package=package,
                                           python=args.python, echo=echo,
                                           show_pip=args.verbose)
        except envs.BuildError as error:
            print(f"jupyterhub-credits: {image_id}: {error}; {envs_dir / image_id} is "
                  "unchanged", file=sys.stderr)
            if error.output:
                print("  last lines:", *(f"  | {line}" for line in error.output),
                      sep="\n", file=sys.stderr)
            failed += 1
            continue
        echo(f"built: {envs_dir / image_id} -> {build}")
    return EXIT_REFUSED if failed else EXIT_OK


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for an error message
        return "<invalid URL>"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "envs":
        try:
            return envs_main(args)
        except UsageError as error:
            print(f"jupyterhub-credits: error: {error}", file=sys.stderr)
            return EXIT_USAGE
    url = args.db or os.environ.get(DB_ENV) or database.DEFAULT_URL
    actor = args.actor or f"cli:{getpass.getuser()}"
    try:
        engine = database.make_engine(url)
    except Exception as error:  # noqa: BLE001 - any URL problem is a usage error
        parser.exit(EXIT_USAGE, f"jupyterhub-credits: error: invalid database URL "
                                f"{_safe_url(url)}: {error}\n")
    try:
        if args.command == "db":
            if args.db_command == "upgrade":
                database.upgrade(engine)
            print(database.current_revision(engine) or "(empty database)")
            return EXIT_OK
        database.ensure_schema(engine)
        return run(args, Ledger(engine, clock=lambda: now()), actor)
    except (InvalidAmount, InvalidRequest, UsageError) as error:
        print(f"jupyterhub-credits: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except LedgerError as error:
        print(f"jupyterhub-credits: refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except SQLAlchemyError as error:
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        print(f"jupyterhub-credits: database error ({_safe_url(url)}): {detail}",
              file=sys.stderr)
        return EXIT_REFUSED
    except BrokenPipeError:  # e.g. `export | head`
        return EXIT_OK
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
