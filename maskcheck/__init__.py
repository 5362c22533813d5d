"""maskcheck: tell real adversarial robustness from gradient masking.

Data flows one way: data -> models -> methods/training -> checkpoint -> audit (checks)
-> JSON -> report. See README.md for the commands.
"""

__version__ = "0.1.0"
