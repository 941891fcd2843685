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
	 * A random (version 4) UUID: the event's id at the bridge, whichever attempt delivers it.
	 *
	 * @return string
	 */
	public static function newEventId(): string {
		$bytes = random_bytes( 16 );
		$bytes[6] = chr( ( ord( $bytes[6] ) & 0x0f ) | 0x40 );
		$bytes[8] = chr( ( ord( $bytes[8] ) & 0x3f ) | 0x80 );
		return vsprintf( '%s%s-%s-%s-%s-%s%s%s', str_split( bin2hex( $bytes ), 4 ) );
	}

	/**
	 * Runs as a POSTSEND deferred update: the login's response is already on its way.
	 *
	 * @param array $payload
	 * @param string $eventId
	 */
	public static function firstAttempt( array $payload, string $eventId ): void {
		try {
			$result = BridgeClient::fromServices()->send( $payload, $eventId );
		} catch ( Throwable $e ) {
			$result = new DeliveryResult( 0, get_class( $e ) . ': ' . $e->getMessage() );
		}
		$context = self::context( $payload, $result ) + [ 'event_id' => $eventId ];
		if ( $result->isDelivered() ) {
			self::logger()->debug( 'Sent login event {event_id} of request {request_id}', $context );
			return;
		}
		if ( $result->isFinal() ) {
			self::dropped( $payload, $result, $eventId );
			return;
		}
		self::logger()->warning(
			'Bridge did not take the login event {event_id} (HTTP {http_status}: {error}); '
				. 'queueing a retry for request {request_id}',
			$context
		);
		self::queueRetry( $payload, $eventId );
	}

	/**
	 * @param array $payload
	 * @param string $eventId
	 */
	public static function queueRetry( array $payload, string $eventId ): void {
		try {
			if ( (int)MediaWikiServices::getInstance()->getMainConfig()->get( 'LoginAuditBridgeMaxRetries' ) < 1 ) {
				self::logger()->error(
					'Lost the login event {event_id} of request {request_id}: LoginAuditBridgeMaxRetries is 0',
					[ 'request_id' => $payload['request_id'] ?? '', 'event_id' => $eventId ]
				);
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
			$jobs->push( SendJob::newSpec( $payload, $eventId, 1, $delay ) );
		} catch ( Throwable $e ) {
			self::logger()->error(
				'Could not queue the login event {event_id} of request {request_id}: {exception}',
				[ 'request_id' => $payload['request_id'] ?? '', 'event_id' => $eventId, 'exception' => $e ]
			);
		}
	}

	/**
	 * A final refusal by the bridge (it logged it too): the one case where an event is dropped.
	 *
	 * @param array $payload
	 * @param DeliveryResult $result
	 * @param string|null $eventId
	 */
	public static function dropped( array $payload, DeliveryResult $result, ?string $eventId ): void {
		self::logger()->error(
			'Bridge {bridge} refused the login event {event_id} of request {request_id} for good '
				. '(HTTP {http_status}: {error})',
			self::context( $payload, $result ) + [ 'event_id' => $eventId ?? '', 'bridge' => $result->bridge ]
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
