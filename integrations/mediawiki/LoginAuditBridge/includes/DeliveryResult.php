<?php
/**
 * The outcome of one POST to the bridge, and whether trying again could change it.
 *
 * Only an answer that names the bridge (the X-Login-Audit-Bridge header) counts: a 2xx from it
 * stores the event, and a 4xx it marks `"final": true` (it would refuse this body again: 400,
 * 413, 415) ends it. Everything else, a 401, a 404 or a 2xx from some other service on the
 * configured address, a 5xx, no answer at all, is retried through the job queue, the same rule
 * as SFTPGo's hook program (login-audit-hook).
 *
 * @file
 */

namespace MediaWiki\Extension\LoginAuditBridge;

class DeliveryResult {
	/** @var int HTTP status, 0 when no answer came (refused, timed out, TLS error) */
	public $httpStatus;
	/** @var string what went wrong, for the log; empty on success */
	public $error;
	/** @var int|null seconds from the answer's Retry-After header */
	public $retryAfter;
	/** @var string|null the bridge's version from X-Login-Audit-Bridge; null: not a bridge */
	public $bridge;
	/** @var bool the bridge said it would refuse this exact body again */
	public $final;

	public function __construct(
		int $httpStatus, string $error = '', ?int $retryAfter = null, ?string $bridge = null, bool $final = false
	) {
		$this->httpStatus = $httpStatus;
		$this->error = $error;
		$this->retryAfter = $retryAfter;
		$this->bridge = $bridge;
		$this->final = $final;
	}

	/** A 2xx from a bridge that named itself: the event is durable there. */
	public function isDelivered(): bool {
		return $this->bridge !== null && $this->httpStatus >= 200 && $this->httpStatus < 300;
	}

	/** A 4xx the bridge itself marked final: no retry can change it (logged, then dropped). */
	public function isFinal(): bool {
		return $this->bridge !== null && $this->final
			&& $this->httpStatus >= 400 && $this->httpStatus < 500;
	}

	public function isRetriable(): bool {
		return !$this->isDelivered() && !$this->isFinal();
	}
}
