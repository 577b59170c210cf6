import pytest
from cryptography.fernet import Fernet

from webapp.secretbox import SecretBox, SecretError


def test_round_trip_and_no_plaintext_in_the_token():
    box = SecretBox([Fernet.generate_key().decode()])
    token = box.encrypt("s3cret-password")
    assert "s3cret" not in token
    assert box.decrypt(token) == "s3cret-password"


def test_rotation_moves_secrets_to_the_newest_key():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox([old]).encrypt("pw")
    rotated = SecretBox([new, old]).rotate(token)
    assert SecretBox([new]).decrypt(rotated) == "pw"
    with pytest.raises(SecretError, match="was a key removed"):
        SecretBox([new]).decrypt(token)
