"""Stage 1's KFP component."""

from kfp.dsl import HTML, Dataset, Output

from components.kfp_tasks import component


@component
def data(config_json: str, tracking_uri: str, parent_run_id: str, dataset: Output[Dataset], data_docs: Output[HTML]):
    from pathlib import Path

    from components.data import adapter
    from components.handoff import data_docs_page

    dataset.metadata.update(adapter.data(config_json, tracking_uri, parent_run_id, dataset.path))
    Path(data_docs.path).write_text(data_docs_page(dataset.path))
