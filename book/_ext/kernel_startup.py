"""IPython start-up file for the kernels that execute the chapters during `make book` (never for JupyterLab).

book/build.py copies it into `book/_build/ipython/profile_default/startup/` and points the build's `IPYTHONDIR`
there. It changes how two things are *recorded* in the executed notebooks, not what the chapters compute:

- Progress bars. `minimoe` uses `tqdm.auto`, which in a kernel with ipywidgets draws a widget; in the static book
  that widget is a clipped, frozen bar. Here `tqdm.auto.tqdm` prints nothing while it runs and one line of text,
  its final state (`train: 100%|██████████| 300/300 [00:12<00:00, 24.1it/s]`), when it closes.
- Figures. Matplotlib figures are stored as PNG with a `Description` text chunk that says what the figure shows
  (its titles, axis labels and legend entries); `_ext/minimoe_book.py` turns that chunk into the image's alt text.
"""


def _final_text_tqdm():
    import sys

    import tqdm.auto
    import tqdm.std

    class FinalTextTqdm(tqdm.std.tqdm):
        """A tqdm bar that prints only its final state, as text, on stdout."""

        def __init__(self, *args, **kwargs):
            kwargs["file"] = sys.stdout
            kwargs.setdefault("ncols", 80)
            kwargs["mininterval"] = float("inf")  # no refresh while running
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None):  # the start and every refresh: print nothing
            return True

        def close(self):
            if self.disable or getattr(self, "_minimoe_closed", False):
                return super().close()
            self._minimoe_closed = True
            line = self.__str__()
            self.disable = True  # tqdm's own close would redraw: it has nothing left to draw
            super().close()
            print(line, flush=True)

    tqdm.auto.tqdm = FinalTextTqdm
    tqdm.auto.trange = lambda *args, **kwargs: FinalTextTqdm(range(*args), **kwargs)


def _describe(fig) -> str:
    """What a matplotlib figure shows, in words, from its titles, labels and legends."""
    kinds = []
    parts = []
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_visible()]
    for ax in axes:
        bits = []
        if ax.get_title():
            bits.append(ax.get_title())
        if ax.images:
            kind = "heat map"
        elif ax.patches and not ax.lines:
            kind = "bar chart"
        elif ax.collections and not ax.lines:
            kind = "scatter plot"
        else:
            kind = "line plot"
        kinds.append(kind)
        axis = ", ".join(f"{name}: {label}" for name, label in (("x", ax.get_xlabel()), ("y", ax.get_ylabel()))
                         if label)
        if axis:
            bits.append(axis)
        legend = ax.get_legend()
        if legend is not None:
            entries = [t.get_text() for t in legend.get_texts() if t.get_text()]
            if entries:
                bits.append("series: " + ", ".join(entries[:8]))
        parts.append(f"{kind}" + (f" ({'; '.join(bits)})" if bits else ""))
    if not parts:
        return title or "a figure"
    head = f"{title}: " if title else ""
    if len(parts) == 1:
        return head + parts[0]
    return head + f"{len(parts)} panels: " + " | ".join(f"{i + 1}. {p}" for i, p in enumerate(parts))


def _png_with_description():
    # matplotlib-inline registers `functools.partial(IPython.core.pylabtools.print_figure, fmt="png", …)` as the
    # PNG formatter of figures when pyplot's backend starts; wrapping the module's function before that happens
    # gives every PNG figure its description.
    import IPython.core.pylabtools as pylabtools

    original = pylabtools.print_figure

    def print_figure(fig, fmt="png", *args, **kwargs):
        if fmt == "png" and "metadata" not in kwargs:
            try:
                kwargs["metadata"] = {"Description": _describe(fig)}
            except Exception:  # a figure we cannot describe is still drawn
                pass
        return original(fig, fmt, *args, **kwargs)

    pylabtools.print_figure = print_figure


try:
    _final_text_tqdm()
    _png_with_description()
except Exception as error:  # never stop a chapter for the book's cosmetics
    print(f"minimoe book start-up: {error!r}")
