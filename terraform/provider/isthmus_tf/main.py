"""`terraform-provider-isthmus`: the executable Terraform starts (plugin protocol v6 over gRPC)."""

from __future__ import annotations

from tf.runner import run_provider

from isthmus_tf.provider import IsthmusProvider


def main() -> None:
    run_provider(IsthmusProvider())


if __name__ == "__main__":
    main()
