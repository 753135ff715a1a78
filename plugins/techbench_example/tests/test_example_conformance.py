"""The whole conformance test of a third-party package: three lines."""

from techbench.testing import parametrize_with_checks


@parametrize_with_checks(
    ["bent_identity", "trunc_normal", "mean_only_batchnorm", "elastic_net", "signum"]
)
def test_techbench(technique, check):
    check(technique)
