"""The runner's contract with a protocol's analysis: results for results.json, figure data apart.

No training here (the end-to-end runs are in the protocols' own tests).
"""

from __future__ import annotations

import numpy as np
import pytest

from xjax.experiments.protocol import Analysis, Protocol
from xjax.experiments.runner import as_analysis


def test_an_analysis_keeps_its_figure_data_out_of_the_results():
  analysis = Analysis({"test_accuracy": 0.5}, figures={"heatmaps": np.zeros((2, 4, 4))})
  assert as_analysis(analysis, Protocol(), "run") is analysis
  assert analysis.results == {"test_accuracy": 0.5}
  assert Analysis({"test_accuracy": 0.5}).figures == {}


def test_a_plain_dict_is_the_results_alone_and_the_old_hidden_keys_are_refused():
  assert as_analysis({"test_accuracy": 0.5}, Protocol(), "run") == Analysis({"test_accuracy": 0.5})
  # Before `Analysis`, figure data rode in "_" keys of the results and the runner dropped them:
  # such a dict now fails loudly instead of writing arrays into results.json.
  with pytest.raises(TypeError, match=r"Protocol.analyse returned figure data in the keys "
                                      r"\['_variables'\] of run 'base'"):
    as_analysis({"test_accuracy": 0.5, "_variables": {}}, Protocol(), "base")
  with pytest.raises(TypeError, match="expected an Analysis"):
    as_analysis([0.5], Protocol(), "base")
