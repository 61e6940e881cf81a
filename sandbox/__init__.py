"""Local emulator of the WeChat server API and the Alipay open gateway, for tests and demos.

``Sandbox`` serves both on one port; see ``sandbox.server`` for the Python and HTTP control API
and ``sandbox.push`` for building WeChat message pushes.
"""

from sandbox.server import Sandbox
from sandbox.state import Clock, SentMessage

__all__ = ["Clock", "Sandbox", "SentMessage"]
