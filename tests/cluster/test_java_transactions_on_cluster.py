"""The Java client's transaction scenarios (tests/apps/txn-client, checked
as in tests/broker/test_java_transactions.py) on a 3-node cluster with
replication factor 3: the coordinator, the group coordinator and the
partition leaders spread over the nodes, markers and transactional offsets
replicated. One cluster serves the four scenarios (each uses its own
topics and transactional ids). Skipped without java/mvn.

    .venv-compat/bin/pytest tests/cluster/test_java_transactions_on_cluster.py -q -p no:cacheprovider
"""

from __future__ import annotations

import pytest

from test_cluster import FAST
from test_java_transactions import CHECKS, run_scenario


@pytest.mark.timeout(240)
def test_java_transactions_on_three_nodes(cluster_factory):
    c = cluster_factory(3, settings=FAST)
    for scenario, check in CHECKS.items():
        check(run_scenario(c, scenario, replication_factor=3))
