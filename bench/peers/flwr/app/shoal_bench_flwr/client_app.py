"""ClientApp: echo the received model back (near-zero local work, like the
site script of shoal's round_overhead.py / transfer.py)."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    # FedAvg weights each reply by "num-examples"; the arrays go back untouched.
    content = RecordDict(
        {
            "arrays": msg.content["arrays"],
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    return Message(content=content, reply_to=msg)
