"""ServerApp: Flower's own FedAvg (2 nodes, fraction 1.0, no federated evaluate)
over a random float32 model of ``model-bytes`` split into ``num-arrays`` arrays.

The round times come from the strategy itself: ``evaluate_fn`` (server-side
evaluation) is called by ``FedAvg.start`` once before round 1 and once after
each round's aggregation, so it appends "<round> <time.time()>" to
``timing-file`` and does nothing else.
"""

import time

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def initial_arrays(total_bytes: int, num_arrays: int) -> ArrayRecord:
    # Random, so that identical chunks cannot flatter a transfer figure.
    rng = np.random.default_rng(1234)
    n = max(1, total_bytes // 4 // num_arrays)
    return ArrayRecord([rng.random(n, dtype=np.float32) for _ in range(num_arrays)])


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    timing_file = str(cfg["timing-file"])

    def record_time(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if timing_file:
            with open(timing_file, "a") as f:
                f.write(f"{server_round} {time.time():.6f}\n")
        return None

    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,  # one train round trip a round, as in shoal's FedAvg
        min_train_nodes=2,
        min_available_nodes=2,
    )
    strategy.start(
        grid=grid,
        initial_arrays=initial_arrays(int(cfg["model-bytes"]), int(cfg["num-arrays"])),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=record_time,
    )
