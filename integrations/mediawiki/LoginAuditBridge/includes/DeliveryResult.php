<?php
/**
 * The outcome of one POST to the bridge, and whether trying again could change it.
 *
 * @file
 */

namespace MediaWiki\Extension\LoginAuditBridge;

class DeliveryResult {
	/**
	 * Answers that a later attempt may turn into a 2xx: timeouts, throttling, an overloaded or
	 * restarting bridge. Every other non-2xx answer (400 malformed, 401 token, 413 size,
	 * 415 media type, redirects, 404) means the request itself is wrong and will stay wrong.
	 */
	private const RETRIABLE_STATUSES = [ 408, 425, 429 ];

	/** @var int HTTP status, 0 when no answer came (refused, timed out, TLS error) */
	public $httpStatus;
	/** @var string what went wrong, for the log; empty on success */
	public $error;
	/** @var int|null seconds from the answer's Retry-After header */
	public $retryAfter;

	public function __construct( int $httpStatus, string $error = '', ?int $retryAfter = null ) {
		$this->httpStatus = $httpStatus;
		$this->error = $error;
		$this->retryAfter = $retryAfter;
	}

	public function isDelivered(): bool {
		return $this->httpStatus >= 200 && $this->httpStatus < 300;
	}

	public function isRetriable(): bool {
		return $this->httpStatus === 0
			|| $this->httpStatus >= 500
			|| in_array( $this->httpStatus, self::RETRIABLE_STATUSES, true );
	}
}
