"""argparse types that check an option's value as it is parsed, so a bad value is an
error naming the option before any work starts (``argument --lr: must be a finite
number > 0, got inf``)."""
import argparse
import math


def integer(minimum=None):
    """An int option, at least ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def number(low=None, high=None, low_open=False, high_open=True):
    """A finite float option in [low, high) (or (low, ...] with ``low_open``; either
    bound may be None)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(
                f"must lie in {describe(low, high, low_open, high_open)}, got {value:g}")
        return value
    parse.__name__ = "number"
    return parse


def describe(low, high, low_open, high_open):
    """Interval notation: [0, 1), (0, inf)."""
    left = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
    right = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
    return f"{left}, {right}"
