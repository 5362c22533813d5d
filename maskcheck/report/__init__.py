"""`maskcheck report`: audit and training JSON in, one self-contained HTML file out.

Needs no model, no torch and no GPU. `render_report` is the entry point; the loader,
headline, plots and check documentation are separate modules so each can be tested alone.
"""

from .headline import headline
from .loader import load_inputs, matrix_table
from .render import render_report

__all__ = ["headline", "load_inputs", "matrix_table", "render_report"]
