"""OpenAI response bodies and SSE streams for one request's choices.

A request has one job per choice: ``n`` per prompt, prompts in order (choice ``i`` is prompt
``i // n``). Whole responses wait for every choice; streams interleave the choices' chunks as
their tokens come, each chunk naming its choice ``index``. Every response (and each choice's
last streamed chunk) carries a ``specgrove`` object with that choice's speculation stats; the
top-level one is the first choice's. A failure in any choice ends the request with it (the
other choices are cancelled and leave the batch at the next step).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator, Sequence

from gateway.http_errors import error, error_body
from gateway.job import Delta, Finished, Job
from gateway.offline import collect
from gateway.logprobs_format import chat_logprobs, completion_logprobs
from gateway.speculation import effective_speculation
from gateway.state import GatewayState


def stats(state: GatewayState, job: Job) -> dict:
    st = job.stats
    eff = effective_speculation(job, state.default_drafter)
    return {"steps": st.steps, "drafted_tokens": st.drafted_tokens,
            "accepted_tokens": st.accepted_tokens,
            "mean_acceptance_length": round(st.mean_acceptance_length, 4),
            "max_batch_size": st.max_batch_size,
            "drafter": eff.drafter, "tree": eff.tree_json(),
            "seed": job.spec.sampling.seed} | _shadow_stats(job)


def _shadow_stats(job: Job) -> dict:
    """The shadow drafters the request named, each with what it would have done on it."""
    asked = set(job.spec.shadow)
    tracks = [t for t in job.shadows if t.drafter in asked]
    return {"shadow": {t.drafter: t.stats.as_json() for t in tracks}} if asked else {}


async def _shadows_scored(jobs: Sequence[Job]) -> None:
    """Wait until the step loop has scored the jobs' shadows to the end of their outputs (it
    does so right after their last step) before their stats are reported."""
    for j in jobs:
        if j.spec.shadow:
            await j.shadows_scored.wait()


def usage(jobs: Sequence[Job], n: int) -> dict:
    """Prompt tokens once per prompt (its ``n`` choices share it), completion tokens of all."""
    n_in = sum(len(j.spec.prompt_ids) for j in jobs[::n])
    n_out = sum(len(j.tokens) for j in jobs)
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def _logprobs(state: GatewayState, job: Job, chat: bool, logprobs: list, offset: int = 0) -> dict | None:
    """A choice's ``logprobs`` in the route's shape; None when the request did not ask."""
    if job.spec.sampling.logprobs is None:
        return None
    if chat:
        return chat_logprobs(state.codec, logprobs)
    return completion_logprobs(state.codec, logprobs, offset)


async def whole(state: GatewayState, jobs: Sequence[Job], n: int, rid: str, chat: bool,
                echo: Sequence[str] = ()):
    """``echo``: per choice, text to put before its completion (the prompt, with ``echo``)."""
    try:
        results = await asyncio.gather(*(collect(j) for j in jobs))
    finally:
        for j in jobs:
            j.cancel()  # no-op once finished; frees the sequence if this handler was cancelled
    failed = next((r.error for r in results if r.error is not None), None)
    if failed is not None:
        return error(failed.status, failed.message)
    await _shadows_scored(jobs)
    choices = []
    for i, (job, done) in enumerate(zip(jobs, results)):
        text, reason = (echo[i] if echo else "") + done.text, done.finish_reason
        lp = _logprobs(state, job, chat, done.logprobs)
        choice = ({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                   "logprobs": lp} if chat else
                  {"index": i, "text": text, "finish_reason": reason, "logprobs": lp})
        if len(jobs) > 1:
            choice["specgrove"] = stats(state, job)
        choices.append(choice)
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": state.model_id, "choices": choices,
            "usage": usage(jobs, n), "specgrove": stats(state, jobs[0])}


async def sse(state: GatewayState, jobs: Sequence[Job], n: int, rid: str, chat: bool,
              include_usage: bool, echo: Sequence[str] = ()) -> AsyncIterator[str]:
    created, obj = int(time.time()), "chat.completion.chunk" if chat else "text_completion"
    offsets = [0] * len(jobs)  # of each choice's next token in its text (completions' text_offset)
    started = [False] * len(jobs)

    def chunk(choices: list, **extra) -> str:
        body = {"id": rid, "object": obj, "created": created, "model": state.model_id,
                "choices": choices, **({"usage": None} if include_usage else {}), **extra}
        return f"data: {json.dumps(body)}\n\n"

    def choice(i: int, text: str | None, reason: str | None, logprobs=()) -> dict:
        lp = _logprobs(state, jobs[i], chat, list(logprobs), offsets[i]) if logprobs else None
        if lp is not None and not chat:
            offsets[i] += sum(len(t) for t in lp["tokens"])
        first, started[i] = not started[i], True
        if chat:
            delta = ({"role": "assistant", "content": text or ""} if first
                     else ({"content": text} if text else {}))
            return {"index": i, "delta": delta, "finish_reason": reason, "logprobs": lp}
        prefix = echo[i] if first and echo else ""  # the echoed prompt leads the first chunk
        return {"index": i, "text": prefix + (text or ""), "finish_reason": reason, "logprobs": lp}

    merged: asyncio.Queue = asyncio.Queue()

    async def forward(i: int, job: Job) -> None:
        while True:
            ev = await job.events.get()
            await merged.put((i, ev))
            if not isinstance(ev, Delta):
                return

    tasks = [asyncio.create_task(forward(i, j)) for i, j in enumerate(jobs)]
    try:
        open_choices = len(jobs)
        while open_choices:
            i, ev = await merged.get()
            if isinstance(ev, Delta):
                if ev.text or not started[i] or ev.logprobs:
                    yield chunk([choice(i, ev.text, None, ev.logprobs)])
            elif isinstance(ev, Finished):
                open_choices -= 1
                await _shadows_scored([jobs[i]])
                extra = {"specgrove": stats(state, jobs[i])}
                yield chunk([choice(i, None, ev.reason)], **extra)
            else:
                yield f"data: {json.dumps(error_body(ev.status, ev.message, code=str(ev.status)))}\n\n"
                break
        else:
            if include_usage:
                yield chunk([], usage=usage(jobs, n))
        yield "data: [DONE]\n\n"
    finally:
        for t in tasks:
            t.cancel()
        for j in jobs:
            j.cancel()  # a client that went away leaves the batch at the next step

