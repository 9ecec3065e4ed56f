"""A local Google Cloud Storage emulator for the tests of gs:// workdirs (gcp-storage-emulator,
in memory, in a thread of the test process), one per test process.

`start()` returns the emulator's URL and points this process, and the child processes it
starts (tests/runs.py copies os.environ), at it: gcsfs (what etils.epath serves gs:// with),
google-cloud-storage (tensorboardX's gs:// writer) and tensorstore (orbax's arrays). No request
leaves the machine: the variables below also stop each client from looking for credentials on
a cloud metadata server.
"""

import atexit
import logging
import os
import sys
import traceback
import uuid

from tests import runs

BUCKET = "learned-loss-test"
_URL = []


def environment(url: str) -> dict[str, str]:
    """The variables that point every client library at the emulator at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's gcs driver (orbax's arrays)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: no credential search
        "NO_GCE_CHECK": "true",  # gcsfs: no metadata-server probe
        # gcsfs: the plain client (its zonal-bucket probe calls the Storage Control API).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


def _quiet(request, client_address) -> None:
    """The emulator's handler of a failed request: a client that hung up is not an error (the
    default prints a traceback); anything else is printed as before."""
    del request
    if not isinstance(sys.exc_info()[1], ConnectionError):
        traceback.print_exc()
        print(f"(request from {client_address})", file=sys.stderr)


def start() -> str:
    """Starts the emulator once per process (with bucket BUCKET) and sets `environment` in
    os.environ; returns its URL."""
    if not _URL:
        from gcp_storage_emulator.server import create_server

        # Its request log and the broken pipes of clients that close early: noise in a test.
        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        port = runs.free_port()
        server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
        server._api.daemon = True  # pylint: disable=protected-access  (exit never waits on it)
        server.start()
        server._api._httpd.handle_error = _quiet  # pylint: disable=protected-access
        atexit.register(server.stop)
        _URL.append(f"http://127.0.0.1:{port}")
        os.environ.update(environment(_URL[0]))
    return _URL[0]


def new_folder(name: str) -> str:
    """A fresh gs:// folder in the emulator's bucket (the emulator started if needed)."""
    start()
    return f"gs://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"
