"""One-shot helpers of the compose stack (deploy/compose.yaml). They run in
the moto image, which has Python and boto3.

  init.py master-key   create the fleet's master key in the Secrets Manager
                       emulator: secret `valet-master-key`, 32 random bytes in
                       base64 (kept if it already exists)
  init.py wait URL     wait until URL answers 200 (valet-1's /readyz, so that
                       valet-1 alone bootstraps the fleet's admin.key)
"""

import base64
import os
import sys
import time
import urllib.request

ENDPOINT = os.environ.get("SECRETS_ENDPOINT", "http://moto:5000")
REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
SECRET = os.environ.get("MASTER_KEY_SECRET", "valet-master-key")
DEADLINE_S = 120


def master_key():
    import boto3

    client = boto3.client("secretsmanager", endpoint_url=ENDPOINT, region_name=REGION)
    give_up = time.monotonic() + DEADLINE_S
    while True:
        try:
            client.describe_secret(SecretId=SECRET)
            print(f"init: secret {SECRET} already exists; kept")
            return
        except client.exceptions.ResourceNotFoundException:
            break
        except Exception as e:  # the emulator is still starting
            if time.monotonic() > give_up:
                sys.exit(f"init: Secrets Manager at {ENDPOINT} did not answer: {e}")
            time.sleep(1)
    key = base64.b64encode(os.urandom(32)).decode()
    client.create_secret(Name=SECRET, SecretString=key, Description="Valet master key (compose demo)")
    print(f"init: created secret {SECRET} (32 random bytes, base64)")


def wait(url):
    give_up = time.monotonic() + DEADLINE_S
    last = None
    while time.monotonic() < give_up:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    print(f"init: {url} is ready")
                    return
        except Exception as e:
            last = e
        time.sleep(1)
    sys.exit(f"init: {url} not ready after {DEADLINE_S} s: {last}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["master-key"]:
        master_key()
    elif sys.argv[1:2] == ["wait"] and len(sys.argv) == 3:
        wait(sys.argv[2])
    else:
        sys.exit(__doc__)
