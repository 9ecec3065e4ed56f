"""Helpers that check the package's outputs and are not part of the library.

  browser   opens a report in headless Chromium with the network cut off and lists what keeps
            it from being self-contained (`experiments/report.py --screenshot`, the report tests)
"""
