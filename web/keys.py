"""Typed keys for values stored on the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from exchange_stream.app import ExchangeApp

FAUST_APP = web.AppKey("faust_app", ExchangeApp)
