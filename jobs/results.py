"""Where finished images go: a folder (default; the gateway serves it) or S3 (boto3, any endpoint).

Keys are ``<job id>/<index>.<ext>``; job ids are unguessable, and the gateway checks the owner before it serves
or presigns anything. Retention: the job record says ``expired`` after ``result_ttl_s``; the filesystem store
deletes older files itself, an S3 bucket should carry a lifecycle rule of the same age (README).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from .settings import JobSettings

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class ResultStore:
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        raise NotImplementedError

    async def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A URL the client may fetch without a key, or None when the gateway must serve the bytes."""
        return None

    async def sweep(self, older_than_s: int) -> int:
        """Delete results older than ``older_than_s``; returns how many (0 where the store expires its own)."""
        return 0


class FilesystemStore(ResultStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"result key {key!r} leaves the results folder")
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_bytes(data)
        partial.replace(path)  # readers never see half a file

    async def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.exists() else None

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def sweep(self, older_than_s: int) -> int:
        cutoff, removed = time.time() - older_than_s, 0
        for path in self.root.glob("*/*"):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        for folder in self.root.iterdir():
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return removed


class S3Store(ResultStore):
    def __init__(self, settings: JobSettings):
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
        )
        self.redirect = settings.s3_redirect

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(
            self.client.put_object, Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=content_type
        )

    async def get(self, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
            except self.client.exceptions.NoSuchKey:
                return None

        return await asyncio.to_thread(read)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self.prefix + key)

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        if not self.redirect:
            return None
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.prefix + key}, ExpiresIn=expires_s
        )


def open_store(settings: JobSettings) -> ResultStore:
    return S3Store(settings) if settings.result_store == "s3" else FilesystemStore(settings.results_dir)
