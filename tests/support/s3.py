"""The in-process moto S3 server the tests use (it lives in :mod:`mend.testing.s3`)."""

from mend.testing.s3 import (
    ACCESS_KEY,
    DEFAULT_BUCKET,
    REGION,
    SECRET_KEY,
    UNSET_ENV,
    MotoS3,
    shared_moto_s3,
    start_moto_s3,
)

__all__ = ["ACCESS_KEY", "DEFAULT_BUCKET", "REGION", "SECRET_KEY", "UNSET_ENV", "MotoS3", "shared_moto_s3",
           "start_moto_s3"]
