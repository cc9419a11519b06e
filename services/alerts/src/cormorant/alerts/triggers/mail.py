"""The e-mail action: one message per firing through the configured SMTP server."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiosmtplib

from cormorant.alerts.triggers.alert import Alert, DeliveryError
from cormorant.alerts.triggers.settings import TriggerSettings

FIRING_HEADER = "X-Cormorant-Firing"


def message_id(alert: Alert) -> str:
    """The message's ``Message-ID``: the firing's, so a re-sent copy is recognisably the same."""
    return f"<{alert.firing_id}@cormorant>"


@dataclass(slots=True)
class Mailer:
    """Sends firings as e-mail with aiosmtplib."""

    settings: TriggerSettings

    def compose(self, alert: Alert) -> EmailMessage:
        """The e-mail of ``alert`` to its action's addresses."""
        message = EmailMessage()
        message["From"] = self.settings.smtp_sender
        message["To"] = ", ".join(alert.action["email"])
        message["Subject"] = alert.subject
        message["Date"] = format_datetime(alert.fired_at)
        message["Message-ID"] = message_id(alert)
        message[FIRING_HEADER] = str(alert.firing_id)
        message.set_content(alert.text())
        return message

    async def deliver(self, alert: Alert) -> dict[str, Any]:
        """Send the e-mail; ``DeliveryError`` if the server refuses it or cannot be reached."""
        s = self.settings
        try:
            errors, response = await aiosmtplib.send(
                self.compose(alert),
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                use_tls=s.smtp_security == "tls",
                start_tls=s.smtp_security == "starttls",
                timeout=s.smtp_timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"every recipient was refused: {exc}", retry=False) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx is the server's final word; 4xx is a temporary failure worth a retry.
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}", retry=exc.code < 500) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {s.smtp_host}:{s.smtp_port}: {exc}") from exc
        refused = {address: str(reason) for address, reason in errors.items()}
        return {"smtp": response, "refused": refused}
