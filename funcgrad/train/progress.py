"""The progress of a `fit` run: a bar on a terminal (or notebook), one line per log interval elsewhere.

Rates and ETAs count from the end of the first call, so compiling the step does not distort them.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import IO, Any

from tqdm.auto import tqdm

from funcgrad.train.hook import Hook, Run


def _interactive(file: IO[str]) -> bool:
    """A terminal, or a notebook (where tqdm.auto draws a widget): somewhere a bar redraws."""
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty()) or ("ipykernel" in sys.modules and file is sys.stderr)


class Progress(Hook):
    """Steps, loss and the last evaluation, every ``every`` steps, with the compile time apart.

    On a terminal a tqdm bar, created once the first call has compiled, so its rate and ETA
    count from there (until then it says "compiling the step…"); elsewhere (a log file, a
    pipe, CI) one line per interval: ``fit: step 200/1000 loss=0.31 1.2ms/step ETA 0:00:01
    compile=2.1s``. ``every=None``: `fit`'s logging interval. ``file``: default ``sys.stderr``.

    Example:
      >>> import io, funcgrad as fg
      >>> bar = fg.train.Progress(every=100, file=io.StringIO())
      >>> bar.every
      100
    """

    def __init__(
        self, every: int | None = None, *, desc: str = "fit", file: IO[str] | None = None
    ) -> None:
        self.every, self.desc, self.file = every, desc, file
        self.bar: Any = None
        self.compiled: float | None = None
        self.t0 = self.t1 = 0.0
        self.first = self.shown = 0

    def _out(self) -> IO[str]:
        return self.file if self.file is not None else sys.stderr

    def _bar(self, run: Run, **options: Any) -> Any:
        return tqdm(
            total=run.total, initial=run.step, unit="step", desc=self.desc, file=self._out(),
            dynamic_ncols=True, **options,
        )  # fmt: skip

    def start(self, run: Run) -> None:
        self.t0, self.compiled, self.shown = time.perf_counter(), None, run.step
        self.interactive = _interactive(self._out())
        if self.interactive:
            self.bar = self._bar(run, leave=False)
            self.bar.set_postfix_str("compiling the step…")

    def first_call_done(self, run: Run) -> None:
        """Called by `fit` once the first call has compiled: rates count from here."""
        self.t1 = time.perf_counter()
        self.compiled, self.first, self.shown = self.t1 - self.t0, run.step, run.step
        if self.interactive:
            self.close()
            self.bar = self._bar(run)
            self.bar.set_postfix_str(f"compile={self.compiled:.1f}s")

    def _postfix(self, run: Run) -> dict[str, str]:
        post = {"loss": f"{run.history['loss'][-1]:.4g}"} if "loss" in run.history else {}
        if run.scores is not None:
            post.update({k: f"{v:.4g}" for k, v in run.scores[1].items()})
        if self.compiled is not None:
            post["compile"] = f"{self.compiled:.1f}s"
        return post

    def after_step(self, run: Run) -> None:
        post = self._postfix(run)
        if self.bar is not None:
            self.bar.update(run.step - self.shown)
            self.bar.set_postfix(post)
        elif not self.interactive:
            self._line(run, post)
        self.shown = run.step

    def _line(self, run: Run, post: dict[str, str]) -> None:
        done = run.step - self.first
        pace = ""
        if done > 0:
            per_step = (time.perf_counter() - self.t1) / done
            eta = datetime.timedelta(seconds=round(per_step * (run.total - run.step)))
            pace = f" {per_step * 1e3:.3g}ms/step ETA {eta}"
        compile_ = post.pop("compile", None)
        values = "".join(f" {k}={v}" for k, v in post.items())
        tail = f" compile={compile_}" if compile_ else ""
        print(f"{self.desc}: step {run.step}/{run.total}{values}{pace}{tail}", file=self._out())

    def end(self, run: Run) -> None:
        if run.step != self.shown or self.bar is not None:
            self.after_step(run)
        if run.stopped:
            if self.bar is not None:
                self.bar.write(f"{self.desc}: {run.stopped}", file=self._out())
            else:
                print(f"{self.desc}: {run.stopped}", file=self._out())
        self.close()

    def close(self) -> None:
        """Close the bar (`fit` calls it however the run ends)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
