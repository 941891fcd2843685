<?php
/**
 * Hook handler: turns each finished login attempt into one payload and sends it after the response.
 *
 * @file
 */

namespace MediaWiki\Extension\LoginAuditBridge;

use DeferredUpdates;
use MediaWiki\Auth\Hook\AuthManagerLoginAuthenticateAuditHook;
use MediaWiki\Logger\LoggerFactory;
use Throwable;

class AuditHookHandler implements AuthManagerLoginAuthenticateAuditHook {

	/**
	 * Hook calls seen in this PHP request. PHP resets statics per request (mod_php, php-fpm and
	 * `php -S` alike), so this numbers the double call of a failed bot-password login 1 and 2.
	 *
	 * @var int
	 */
	private static $invocations = 0;

	/**
	 * @inheritDoc
	 */
	public function onAuthManagerLoginAuthenticateAudit( $response, $user, $username, $extraData ) {
		// Auditing must never break or slow a login: nothing in here may throw, and all network
		// work waits until the response has been sent.
		try {
			self::$invocations++;
			if ( !Delivery::isConfigured() ) {
				return;
			}
			$payload = LoginPayload::fromHook(
				$response, $user, $username, $extraData ?? [], self::$invocations
			);
			// Fixed here, once per audit call, and sent with every attempt and retry: a copy
			// that arrives twice carries one id, so consumers can drop the duplicate.
			$eventId = Delivery::newEventId();
			DeferredUpdates::addCallableUpdate(
				static function () use ( $payload, $eventId ) {
					Delivery::firstAttempt( $payload, $eventId );
				},
				DeferredUpdates::POSTSEND
			);
		} catch ( Throwable $e ) {
			LoggerFactory::getInstance( Delivery::LOG_CHANNEL )->error(
				'Could not prepare the login audit event: {exception}',
				[ 'exception' => $e ]
			);
		}
	}
}
