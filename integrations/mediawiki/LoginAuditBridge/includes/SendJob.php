<?php
/**
 * The retry job: resends one payload the first attempt could not deliver, with backoff.
 *
 * Two ways to wait, picked by what the wiki's job queue can do:
 *  - a queue with delayed jobs (Redis): the job acknowledges itself and pushes its successor with
 *    `jobReleaseTimestamp` = now + LoginAuditBridgeRetryDelay * 2^(attempt-1), capped at an hour;
 *  - the database queue (MediaWiki's default, no delayed jobs): the job reports failure and stays
 *    claimed; JobQueueDB hands it out again once its claim is older than the type's claimTTL,
 *    until it was tried maxTries times (RetryQueueSetup sets both for this type).
 *
 * @file
 */

namespace MediaWiki\Extension\LoginAuditBridge;

use GenericParameterJob;
use Job;
use JobSpecification;
use MediaWiki\MediaWikiServices;
use Throwable;

class SendJob extends Job implements GenericParameterJob {
	public const TYPE = 'loginAuditBridgeSend';

	/** Longest wait between two attempts on a queue with delayed jobs. */
	private const MAX_DELAY_SECONDS = 3600;

	/**
	 * @param array $params 'payload' (the JSON object), 'event_id' (the id of the first attempt;
	 *   absent in jobs queued by versions before 0.2), 'attempt' (1 for the first retry)
	 */
	public function __construct( array $params ) {
		parent::__construct( self::TYPE, $params );
	}

	/**
	 * @param array $payload
	 * @param string|null $eventId kept from the first attempt, so every copy carries one id
	 * @param int $attempt
	 * @param int $delaySeconds 0: ready now
	 * @return JobSpecification
	 */
	public static function newSpec( array $payload, ?string $eventId, int $attempt, int $delaySeconds ): JobSpecification {
		$params = [ 'payload' => $payload, 'event_id' => $eventId, 'attempt' => $attempt ];
		if ( $delaySeconds > 0 ) {
			$params['jobReleaseTimestamp'] = time() + $delaySeconds;
		}
		return new JobSpecification( self::TYPE, $params );
	}

	/**
	 * @return bool true when the event is delivered, refused for good or handed to a successor
	 */
	public function run() {
		$payload = $this->params['payload'];
		$eventId = isset( $this->params['event_id'] ) ? (string)$this->params['event_id'] : null;
		$attempt = (int)( $this->params['attempt'] ?? 1 );
		try {
			$result = BridgeClient::fromServices()->send( $payload, $eventId );
		} catch ( Throwable $e ) {
			$result = new DeliveryResult( 0, get_class( $e ) . ': ' . $e->getMessage() );
		}
		$context = Delivery::context( $payload, $result ) + [ 'attempt' => $attempt, 'event_id' => $eventId ?? '' ];
		if ( $result->isDelivered() ) {
			Delivery::logger()->info( 'Retry {attempt} sent the login event {event_id} of request {request_id}', $context );
			return true;
		}
		if ( $result->isFinal() ) {
			Delivery::dropped( $payload, $result, $eventId );
			return true;
		}
		Delivery::logger()->warning(
			'Retry {attempt} of the login event {event_id} for request {request_id} failed (HTTP {http_status}: {error})',
			$context
		);
		return $this->retryLater( $payload, $eventId, $attempt, $result );
	}

	/**
	 * @param array $payload
	 * @param string|null $eventId
	 * @param int $attempt
	 * @param DeliveryResult $result
	 * @return bool
	 */
	private function retryLater( array $payload, ?string $eventId, int $attempt, DeliveryResult $result ): bool {
		$services = MediaWikiServices::getInstance();
		$queue = $services->getJobQueueGroup()->get( self::TYPE );
		if ( !$queue->delayedJobsEnabled() ) {
			$this->setLastError( "bridge: {$result->error}" );
			return false;
		}
		$config = $services->getMainConfig();
		if ( $attempt >= (int)$config->get( 'LoginAuditBridgeMaxRetries' ) ) {
			Delivery::logger()->error( 'Gave up on the login event {event_id} of request {request_id} after {attempt} retries',
				Delivery::context( $payload, $result ) + [ 'attempt' => $attempt, 'event_id' => $eventId ?? '' ] );
			return true;
		}
		$delay = self::backoff( (int)$config->get( 'LoginAuditBridgeRetryDelay' ), $attempt + 1, $result->retryAfter );
		$queue->push( self::newSpec( $payload, $eventId, $attempt + 1, $delay ) );
		return true;
	}

	/**
	 * @param int $base seconds before the first retry
	 * @param int $attempt the retry about to be queued, from 1
	 * @param int|null $retryAfter the bridge's own wish, honoured when longer
	 * @return int
	 */
	public static function backoff( int $base, int $attempt, ?int $retryAfter = null ): int {
		$exponential = min( self::MAX_DELAY_SECONDS, max( 1, $base ) * 2 ** min( $attempt - 1, 12 ) );
		return (int)max( $exponential, min( $retryAfter ?? 0, self::MAX_DELAY_SECONDS ) );
	}

	/**
	 * A failed run leaves the job claimed, so the database queue offers it again after claimTTL.
	 *
	 * @return bool
	 */
	public function allowRetries() {
		return true;
	}
}
