"""fasterrcnn_edu.lab.glue writes exactly what MyST-NB's glue writes (the book build reads it back)."""
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from fasterrcnn_edu.lab.glue import glue


@pytest.fixture(autouse=True)
def shell():
    """display() needs a shell, as in a notebook kernel: one without a history file, removed afterwards."""
    from traitlets.config import Config
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    yield InteractiveShell.instance(config=config)
    InteractiveShell.clear_instance()


def _outputs(fn, *args, **kwargs):
    with capture_output() as captured:
        fn(*args, **kwargs)
    return [(out.data, out.metadata) for out in captured.outputs]


@pytest.mark.parametrize("value", [0.8624, 300, "RoIAlign", [1, 2]])
@pytest.mark.parametrize("display", [True, False])
def test_the_output_is_myst_nbs(value, display):
    from myst_nb.ext.glue import glue as myst_glue
    ours = _outputs(glue, "key", value, display=display)
    theirs = _outputs(myst_glue, "key", value, display=display)
    assert ours == theirs and len(ours) == 1
    data, metadata = ours[0]
    assert metadata["scrapbook"]["name"] == "key"
    assert all(mime.startswith("application/papermill.record/") != display for mime in data)
