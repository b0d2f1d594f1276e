"""OpenTelemetry spans of the ledger's calls, when ``opentelemetry-api`` is
installed (``pip install 'ctxledger[otel]'``); without it ``traced`` returns each
method as it is, and nothing here costs anything.

The ledger configures no tracer provider and no exporter: spans are recorded
only when the application installs the OpenTelemetry SDK and sets a provider;
until then the API's tracer is a no-op.

Each public call of a ledger (a method ``AsyncContextLedger`` also offers; not
``changes``, whose feed lives on after the call) is one INTERNAL span named
``ctxledger.<method>``, a child of the caller's current span, with:

- ``ctxledger.command``: the method's name;
- ``ctxledger.outcome``: ``ok``, ``refused`` (a LedgerError) or ``error``
  (StorageUnavailable, or anything else), as the ledger's metrics decide it;
- ``ctxledger.events_appended`` and ``ctxledger.conflict_retries``: what the
  call stored, and how many saves it retried after another process won;
- ``ctxledger.shard``: the shard whose database answered (a sharded ledger's
  call of one user, or a shard's own ledger); left out of calls across shards;
- ``db.system.name``: ``sqlite`` or ``postgresql`` (left out for memory://);
- ``ctxledger.caller_transaction``: true when the call appended in the caller's
  own transaction (``connection=``), whose outcome the span cannot know;
- on a failure: ``error.type``, status ERROR, and the exception as an event
  whose message and stack trace leave out the error's text.

No user id, thread id, context id, request id or metadata is put in a span,
neither raw nor hashed: traces are kept by systems outside the ledger, beyond
the reach of its erasure (``forget_user``), so an id written there could never
be forgotten; a hash of a low-entropy id is reversed by trying the candidates,
and a keyed one would still tie all of a user's spans together after erasure.
The errors' messages name users and ids, hence the text left out above.

A ledger call made within another (a sharded ledger routing to a shard's
ledger, ``verify_checkpoint`` calling ``verify_checkpoints``) adds no span: its
figures count in the outer call's span. The caller's own code that a call runs
(``verify_chain``'s ``on_page``) runs through ``outside_call``: a ledger call
it makes is a call of its own, with its own span beneath the outer one.
"""

import contextvars
import functools
import traceback
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ParamSpec, TypeVar

from ledger import _metrics as metrics
from ledger.errors import LedgerError, StorageUnavailable

P = ParamSpec("P")
T = TypeVar("T")

trace: Any
try:
    from opentelemetry import trace
except ImportError:  # the otel extra is not installed
    trace = None

SCOPE = "ctxledger"
"""The instrumentation scope's name (the tracer's)."""
_DB_SYSTEMS = {"sqlite": "sqlite", "postgres": "postgresql"}
_MARK = "_ctxledger_span"
"""Set on a traced method: the name of its span (checked by the tests)."""


class _Call:
    """The figures of the ledger call under way in this context."""

    __slots__ = ("caller_transaction", "events", "retries", "shard")

    def __init__(self, shard: str | None) -> None:
        self.events = 0
        self.retries = 0
        self.shard = shard
        self.caller_transaction = False


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "ctxledger_call", default=None
)


def enabled() -> bool:
    """Whether spans are started (opentelemetry-api is installed)."""
    return trace is not None


def traced(command: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Runs each call of a ledger method in a span ``ctxledger.<command>``,
    unless it is made within another ledger call."""

    def decorate(method: Callable[P, T]) -> Callable[P, T]:
        if trace is None:
            return method
        name = f"{SCOPE}.{command}"

        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            tracer = None if _CALL.get() is not None else _tracer()
            if tracer is None:
                return method(*args, **kwargs)
            ledger = args[0] if args else None
            figures = _Call(getattr(ledger, metrics._SHARD, None))
            token = _CALL.set(figures)
            try:
                with tracer.start_as_current_span(
                    name,
                    kind=trace.SpanKind.INTERNAL,
                    attributes=_start_attributes(command, ledger),
                    record_exception=False,
                    set_status_on_exception=False,
                ) as span:
                    try:
                        result = method(*args, **kwargs)
                    except BaseException as error:
                        if span.is_recording():
                            _record_failure(span, error, figures)
                        raise
                    if span.is_recording():
                        _record_figures(span, "ok", figures)
                    return result
            finally:
                _CALL.reset(token)

        setattr(call, _MARK, name)
        return call

    return decorate


def _tracer() -> Any:
    """The tracer of the provider the application set; None while it has set
    none (the API's own provider, whose spans record nothing): the call then
    runs without a span, which is what the no-op span would have amounted to,
    at a fraction of its cost."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return _tracer_of(provider)


@functools.lru_cache(maxsize=2)  # the global provider is set once per process
def _tracer_of(provider: Any) -> Any:
    try:
        installed: str | None = version("ctxledger")
    except PackageNotFoundError:
        installed = None
    return provider.get_tracer(SCOPE, installed)


def _start_attributes(command: str, ledger: object) -> dict[str, str]:
    attributes = {"ctxledger.command": command}
    storage = getattr(ledger, "storage", None)
    system = _DB_SYSTEMS.get(getattr(storage, "kind", ""))
    if system is not None:
        attributes["db.system.name"] = system
    return attributes


def _record_figures(span: Any, outcome: str, figures: _Call) -> None:
    span.set_attribute("ctxledger.outcome", outcome)
    span.set_attribute("ctxledger.events_appended", figures.events)
    span.set_attribute("ctxledger.conflict_retries", figures.retries)
    if figures.shard is not None:
        span.set_attribute("ctxledger.shard", int(figures.shard))
    if figures.caller_transaction:
        span.set_attribute("ctxledger.caller_transaction", True)


def _record_failure(span: Any, error: BaseException, figures: _Call) -> None:
    refused = isinstance(error, LedgerError) and not isinstance(
        error, StorageUnavailable
    )
    _record_figures(span, "refused" if refused else "error", figures)
    span.set_attribute("error.type", error_type(error))
    span.record_exception(error, attributes=_exception_attributes(error), escaped=True)
    span.set_status(trace.Status(trace.StatusCode.ERROR))


def error_type(error: BaseException) -> str:
    """The ledger's errors by name (as ``ctxledger_refusals_total`` labels
    them: ``ledger`` exports each); others by module and name."""
    kind = type(error)
    if isinstance(error, LedgerError) or kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _exception_attributes(error: BaseException) -> dict[str, str]:
    """The exception event's message and stack trace without the error's text
    (it names users and ids): the class's own description, and the frames."""
    described = (type(error).__doc__ or "").strip().splitlines()
    frames = traceback.format_tb(error.__traceback__)
    return {
        "exception.message": described[0] if described else "",
        "exception.stacktrace": "Traceback (most recent call last):\n"
        + "".join(frames)
        + error_type(error),
    }


def outside_call(callback: Callable[P, T]) -> Callable[P, T]:
    """``callback``, the caller's code that a ledger call runs, run as if no
    ledger call were under way: a call it makes has its own span (a child of
    the outer call's) and its own figures, not the outer call's."""
    if trace is None:
        return callback

    @functools.wraps(callback)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        token = _CALL.set(None)
        try:
            return callback(*args, **kwargs)
        finally:
            _CALL.reset(token)

    return run


def routed_to(shard_id: int) -> None:
    """The call under way runs on shard ``shard_id`` (a sharded ledger's routing;
    the last shard tried is the one that answered)."""
    figures = _CALL.get()
    if figures is not None:
        figures.shard = str(shard_id)


def in_caller_transaction() -> None:
    """The call under way appends in the caller's own transaction
    (``connection=``): its events commit or roll back with it."""
    figures = _CALL.get()
    if figures is not None:
        figures.caller_transaction = True


def count_events(appended: int) -> None:
    """``appended`` events stored by the call under way."""
    figures = _CALL.get()
    if figures is not None:
        figures.events += appended


def count_retry() -> None:
    """A save of the call under way retried after another process won."""
    figures = _CALL.get()
    if figures is not None:
        figures.retries += 1
