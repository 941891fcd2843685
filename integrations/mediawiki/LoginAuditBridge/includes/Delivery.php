<?php
/**
 * What happens to a payload: one attempt after the response, then the job queue if that failed.
 *
 * @file
 */

namespace MediaWiki\Extension\LoginAuditBridge;

use MediaWiki\Logger\LoggerFactory;
use MediaWiki\MediaWikiServices;
use Psr\Log\LoggerInterface;
use Throwable;

class Delivery {
	/** The debug log channel ($wgDebugLogGroups['LoginAuditBridge']). */
	public const LOG_CHANNEL = 'LoginAuditBridge';

	public static function isConfigured(): bool {
		return (string)MediaWikiServices::getInstance()->getMainConfig()->get( 'LoginAuditBridgeUrl' ) !== '';
	}

	/**
	 * Runs as a POSTSEND deferred update: the login's response is already on its way.
	 *
	 * @param array $payload
	 */
	public static function firstAttempt( array $payload ): void {
		try {
			$result = BridgeClient::fromServices()->send( $payload );
		} catch ( Throwable $e ) {
			$result = new DeliveryResult( 0, get_class( $e ) . ': ' . $e->getMessage() );
		}
		if ( $result->isDelivered() ) {
			self::logger()->debug( 'Sent login event of request {request_id}', self::context( $payload, $result ) );
			return;
		}
		if ( !$result->isRetriable() ) {
			self::dropped( $payload, $result );
			return;
		}
		self::logger()->warning(
			'Bridge unreachable ({error}); queueing a retry for request {request_id}',
			self::context( $payload, $result )
		);
		self::queueRetry( $payload );
	}

	/**
	 * @param array $payload
	 */
	public static function queueRetry( array $payload ): void {
		try {
			if ( (int)MediaWikiServices::getInstance()->getMainConfig()->get( 'LoginAuditBridgeMaxRetries' ) < 1 ) {
				self::dropped( $payload, new DeliveryResult( 0, 'LoginAuditBridgeMaxRetries is 0' ) );
				return;
			}
			$config = MediaWikiServices::getInstance()->getMainConfig();
			$jobs = MediaWikiServices::getInstance()->getJobQueueGroup();
			// The database queue cannot delay a job; there the first retry is simply the next
			// job run, and later ones wait for the claim to expire (see SendJob).
			$delay = $jobs->get( SendJob::TYPE )->delayedJobsEnabled()
				? SendJob::backoff( (int)$config->get( 'LoginAuditBridgeRetryDelay' ), 1 ) : 0;
			// push(), not lazyPush(): we already run after the response, and the event must be
			// in the job table before this request ends.
			$jobs->push( SendJob::newSpec( $payload, 1, $delay ) );
		} catch ( Throwable $e ) {
			self::logger()->error(
				'Could not queue the login event of request {request_id}: {exception}',
				[ 'request_id' => $payload['request_id'] ?? '', 'exception' => $e ]
			);
		}
	}

	/**
	 * @param array $payload
	 * @param DeliveryResult $result
	 */
	public static function dropped( array $payload, DeliveryResult $result ): void {
		self::logger()->error(
			'Bridge refused the login event of request {request_id} for good (HTTP {http_status}: {error})',
			self::context( $payload, $result )
		);
	}

	/**
	 * @param array $payload
	 * @param DeliveryResult $result
	 * @return array
	 */
	public static function context( array $payload, DeliveryResult $result ): array {
		return [
			'request_id' => $payload['request_id'] ?? '',
			'invocation' => $payload['invocation'] ?? 1,
			'http_status' => $result->httpStatus,
			'error' => $result->error,
		];
	}

	public static function logger(): LoggerInterface {
		return LoggerFactory::getInstance( self::LOG_CHANNEL );
	}
}
