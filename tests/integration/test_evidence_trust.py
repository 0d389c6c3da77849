"""Evidence checkpoint keys in a process of its own: the option and the key loader read key text alike, and
checking a key's text does not import ``cryptography``."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from barecount_provider import config
from barecount_provider.evidence import checkpoint as cp

pytestmark = pytest.mark.integration


def test_the_option_and_the_key_loader_read_key_text_alike_and_the_option_without_cryptography(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One reading of key text (config.decode_key_text): what the option refuses, loading refuses too; and
    importing the configuration and checking a key's text does not import ``cryptography`` (Airflow's own
    configuration, read by every getter, may)."""
    import subprocess
    import sys

    public = Ed25519PrivateKey.generate().public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = public.public_bytes(serialization.Encoding.PEM, spki).decode()
    good, short, garbage = cp.public_key_text(public), "YWJj", "not a key!"
    for text in (good, pem, short, garbage):
        monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_PUBLIC_KEY", text)
        config.cache_clear()
        try:
            config.evidence_checkpoint_public_key()
            option_accepts = True
        except ValueError:
            option_accepts = False
        try:
            cp.load_public_key(text)
            loader_accepts = True
        except ValueError:
            loader_accepts = False
        assert option_accepts == loader_accepts == (text in (good, pem)), text
    config.cache_clear()

    probe = (
        "import sys\n"
        "from barecount_provider import config\n"
        "assert config.CHECKS['evidence_checkpoint_public_key'].parse(sys.argv[1])\n"
        "print('cryptography' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe, good], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
