"""From a loss *body* to its public function: the canonical signature of the body's data kind, built from
the declaration (`prefopt.registry.LossDeclaration`), and the call that passes the body only what it reads.

    body parameter            public signature                      at call time
    kind input / lengths      canonical position and default        checked by the kind's contract
    hyper-parameter           keyword-only, default = HParam's      validated against its domain
    anything else             extra input: keyword-only, None       passed as given
    annotated without None    (unchanged)                           None raises LossInputError

A body has no defaults (the `HParam` holds each hyper-parameter's), takes every declared hyper-parameter
(one it ignored would be accepted and ignored), and annotates each parameter (the annotation becomes the
public signature's). `prefopt.losses.kinds` builds its per-kind helpers on `register_body`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefopt.errors import LossInputError
from prefopt.loss_inputs import KIND_INPUTS, LENGTH_INPUTS
from prefopt.registry import LossDeclaration, LossSpec

__all__ = ["Adapter", "register_body"]


# How a kind-helper turns one call into the body's output: (spec, every argument with its default, run) →
# LossOutput, where run(terms) calls the body with the terms object and the keyword arguments it declares.
Adapter = Callable[[LossSpec, Mapping[str, Any], Callable[[Any], Any]], Any]


def register_body(
    name: str,
    *,
    adapter: Adapter | None = None,
    call_doc: str = "",
    **declared: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a loss *body* and return its public function, which has the kind's canonical signature.

    The body takes no defaults. Without `adapter`, its parameters are names it reads (the kind's inputs,
    lengths, hyper-parameters, extra inputs) and it returns the `LossOutput`. With `adapter` (the kind
    helpers of `prefopt.losses.kinds`), its first parameter is the kind's terms object, which the adapter
    builds, and the rest are keyword-only hyper-parameters and extra inputs. Every declared `HParam` must be
    a body parameter. Any other keyword is an extra input: keyword-only, default None, in the order the body
    lists them. A parameter annotated without None is required: None raises `LossInputError`. `call_doc` is
    appended to the public docstring (the kind's call). `declared`: the other arguments of `register_loss`
    (`kind`, `needs_reference`, `paper`, `formula`, `hparams`, ...), the fields of `LossDeclaration`.
    """
    declaration = LossDeclaration(name, **declared)
    kind, scores, hparams = declaration.kind, declaration.scores, declaration.hparams

    def decorator(body: Callable[..., Any]) -> Callable[..., Any]:
        where = f"loss {name!r}"
        params = list(inspect.signature(body).parameters.values())
        if adapter is not None:
            if not params or params[0].kind not in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            ):
                raise TypeError(f"{where}: the body's first parameter is the kind's terms object")
            params = params[1:]
            if any(p.kind is not inspect.Parameter.KEYWORD_ONLY for p in params):
                raise TypeError(
                    f"{where}: after the terms object a body takes keyword-only arguments (`*, beta: float`)"
                )
        annotations = {p.name: _annotation(where, p) for p in params}
        _check_body_names(declaration, annotations, terms=adapter is not None)
        names = list(annotations)
        required = [n for n in names if not _optional(annotations[n])]
        hp_names = {h.name for h in hparams}
        lengths = _signature_lengths(kind, scores)
        extra = tuple(
            n for n in names if n not in KIND_INPUTS[(kind, scores)] and n not in lengths and n not in hp_names
        )
        signature = _canonical_signature(declaration, extra, annotations)

        def invoke(spec: LossSpec, bound: inspect.BoundArguments) -> Any:
            bound.apply_defaults()
            values = bound.arguments
            missing = [n for n in required if values[n] is None]
            if missing:
                raise LossInputError(f"{name}: {', '.join(missing)} is required (got None).")
            kwargs = {n: values[n] for n in names}
            if adapter is None:
                return body(**kwargs)
            return adapter(spec, values, lambda terms: body(terms, **kwargs))

        if call_doc:
            doc_source = _with_doc(body, f"{inspect.getdoc(body) or ''}\n\n{call_doc}")
        else:
            doc_source = body
        return declaration.publish(signature, extra, doc_source, invoke)

    return decorator


def _annotation(where: str, p: inspect.Parameter) -> str:
    """The parameter's annotation as source text; bodies must annotate, and take no defaults."""
    if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        raise TypeError(f"{where}: a body declares each argument it reads by name, not *{p.name}")
    if p.default is not inspect.Parameter.empty:
        raise TypeError(
            f"{where}: body parameter {p.name!r} has a default; hyper-parameter defaults come from "
            f"its HParam and extra inputs default to None"
        )
    if p.annotation is inspect.Parameter.empty:
        raise TypeError(f"{where}: annotate body parameter {p.name!r} (it becomes the public signature)")
    return p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)


def _optional(annotation: str) -> bool:
    """Whether an annotation admits None (`X | None`, `Optional[X]`, `None`)."""
    return "None" in (part.strip() for part in annotation.split("|")) or annotation.startswith("Optional[")


def _check_body_names(declaration: LossDeclaration, annotations: Mapping[str, str], *, terms: bool) -> None:
    """Every hyper-parameter is read; a terms body reads the kind's inputs through its terms object only; a
    body never reads a reference it may not get, nor requires lengths it may not get."""
    where = f"loss {declaration.name!r}"
    unread = [h.name for h in declaration.hparams if h.name not in annotations]
    if unread:
        raise TypeError(
            f"{where}: declares hyper-parameter(s) {unread} that its body does not take (they would be "
            f"accepted and ignored)"
        )
    for h in declaration.hparams:
        if h.default is None and not _optional(annotations[h.name]):
            raise TypeError(f"{where}: hyper-parameter {h.name!r} defaults to None, so annotate it `… | None`")
    inputs = KIND_INPUTS[(declaration.kind, declaration.scores)]
    lengths = _signature_lengths(declaration.kind, declaration.scores)
    if terms:
        direct = [n for n in annotations if n in inputs or n in lengths]
        if direct:
            raise TypeError(f"{where}: {direct} come in the terms object, not as body parameters")
        return
    for n, text in annotations.items():
        if n in inputs and n.startswith("ref_") and not declaration.needs_reference:
            raise TypeError(f"{where} is reference-free (needs_reference=False), so its body cannot take {n}")
        if n in lengths and not declaration.needs_lengths and not _optional(text):
            raise TypeError(f"{where}: {n} is optional unless needs_lengths=True; annotate it `Tensor | None`")


def _signature_lengths(kind: str, scores: str) -> tuple[str, ...]:
    """The length keywords of a kind's public signature. A reward model's pair of scores carries none
    (`bradley_terry`); ranked reward-model losses keep `lengths` like the ranked log-prob losses."""
    return () if (kind, scores) == ("paired", "rewards") else LENGTH_INPUTS[kind]


def _canonical_signature(
    declaration: LossDeclaration, extra: Sequence[str], annotations: Mapping[str, str]
) -> inspect.Signature:
    """kind inputs (those from the first reference or behaviour-policy input on default to None), then keyword-only
    extra inputs (default None), lengths (default None) and hyper-parameters (their HParam defaults)."""
    Parameter = inspect.Parameter
    params = []
    optional = False
    for n in KIND_INPUTS[(declaration.kind, declaration.scores)]:
        optional = optional or n.startswith("ref_") or n == "old_logps"
        params.append(
            Parameter(
                n,
                Parameter.POSITIONAL_OR_KEYWORD,
                default=None if optional else Parameter.empty,
                annotation="Tensor | None" if optional else "Tensor",
            )
        )
    for n in extra:
        text = annotations[n]
        params.append(
            Parameter(n, Parameter.KEYWORD_ONLY, default=None, annotation=text if _optional(text) else f"{text} | None")
        )
    for n in _signature_lengths(declaration.kind, declaration.scores):
        params.append(Parameter(n, Parameter.KEYWORD_ONLY, default=None, annotation="Tensor | None"))
    for h in declaration.hparams:
        params.append(Parameter(h.name, Parameter.KEYWORD_ONLY, default=h.default, annotation=annotations[h.name]))
    return inspect.Signature(params, return_annotation="LossOutput")


def _with_doc(body: Callable[..., Any], doc: str) -> Callable[..., Any]:
    """A stand-in carrying `body`'s names with docstring `doc` (the body itself is left untouched)."""

    def stand_in() -> None: ...

    for attr in ("__module__", "__name__", "__qualname__"):
        setattr(stand_in, attr, getattr(body, attr))
    stand_in.__doc__ = doc
    return stand_in
