<?php
/**
 * Builds the JSON object of docs/mediawiki-hook.md from one call of the audit hook.
 *
 * @file
 */

namespace MediaWiki\Extension\LoginAuditBridge;

use JsonSerializable;
use MediaWiki\Auth\AuthenticationResponse;
use MediaWiki\MediaWikiServices;
use MediaWiki\User\UserIdentity;
use MessageSpecifier;
use RequestContext;
use Throwable;
use WebRequest;

class LoginPayload {
	/** The body version the bridge checks before reading anything else. */
	public const FORMAT = 'login-audit-bridge.mediawiki.v1';

	/**
	 * Longest strings the bridge accepts (it answers 400 beyond them, which would lose the event).
	 * The raw username and the User-Agent come from the client and can be anything, so they are
	 * cut rather than sent whole.
	 */
	private const MAX_NAME = 255;
	private const MAX_TEXT = 1024;
	private const MAX_PARAMS = 32;
	/**
	 * The request id is the client's X-Request-Id header when the wiki sets
	 * $wgAllowExternalReqID: any length, even empty.
	 */
	private const MAX_REQUEST_ID = 128;

	/**
	 * @param AuthenticationResponse $response PASS or FAIL
	 * @param UserIdentity|null $user
	 * @param string|null $username
	 * @param array $extraData
	 * @param int $invocation 1 for the first hook call in this request
	 * @return array<string,mixed>
	 */
	public static function fromHook( $response, $user, $username, array $extraData, int $invocation ): array {
		$config = MediaWikiServices::getInstance()->getMainConfig();
		$request = RequestContext::getMain()->getRequest();
		$message = $response->message ?? null;

		return [
			'format' => self::FORMAT,
			'status' => (string)$response->status,
			'username' => self::cut( (string)$username, self::MAX_NAME ),
			'canonical_username' => self::stringOrNull( $response->username ?? null ),
			'user' => $user ? [ 'id' => (int)$user->getId(), 'name' => self::cut( $user->getName(), self::MAX_NAME ) ] : null,
			'message_key' => $message instanceof MessageSpecifier ? $message->getKey() : null,
			'message_params' => $message instanceof MessageSpecifier
				? self::plainParams( $message->getParams() ) : [],
			'app_id' => self::stringOrNull( $extraData['appId'] ?? null ),
			'performer' => self::performerName( $extraData['performer'] ?? null ),
			'ip' => self::clientIp( $request ),
			'user_agent' => $config->get( 'LoginAuditBridgeSendUserAgent' )
				? self::stringOrNull( $request->getHeader( 'User-Agent' ), self::MAX_TEXT ) : null,
			'request_id' => self::requestId( WebRequest::getRequestId() ),
			'invocation' => $invocation,
			'wiki_id' => MediaWikiServices::getInstance()->getDBLoadBalancerFactory()->getLocalDomainID(),
			'server' => self::stringOrNull( $config->get( 'Server' ), self::MAX_TEXT ),
			'entry_point' => defined( 'MW_ENTRY_POINT' ) ? MW_ENTRY_POINT : null,
			'time' => (int)floor( microtime( true ) * 1000 ),
			'mw_version' => MW_VERSION,
		];
	}

	/**
	 * Message parameters as plain JSON values: durations stay `{"duration":300}`, nested
	 * messages become their key, anything else its string form.
	 *
	 * @param array $params
	 * @return array
	 */
	public static function plainParams( array $params ): array {
		return array_map( [ self::class, 'plainValue' ], array_slice( array_values( $params ), 0, self::MAX_PARAMS ) );
	}

	/**
	 * @param mixed $value
	 * @return mixed
	 */
	private static function plainValue( $value ) {
		if ( $value === null || is_scalar( $value ) ) {
			return $value;
		}
		if ( is_array( $value ) ) {
			return array_map( [ self::class, 'plainValue' ], $value );
		}
		if ( $value instanceof MessageSpecifier ) {
			return $value->getKey();
		}
		if ( $value instanceof JsonSerializable ) {
			return self::plainValue( $value->jsonSerialize() );
		}
		return method_exists( $value, '__toString' ) ? (string)$value : get_class( $value );
	}

	/**
	 * MediaWiki >= 1.42 passes the performer as a UserIdentity (older code paths: a name).
	 *
	 * @param mixed $performer
	 * @return string|null
	 */
	private static function performerName( $performer ): ?string {
		if ( $performer instanceof UserIdentity ) {
			return self::cut( $performer->getName(), self::MAX_NAME );
		}
		return self::stringOrNull( $performer );
	}

	private static function clientIp( WebRequest $request ): string {
		try {
			return (string)$request->getIP();
		} catch ( Throwable $e ) {
			// getIP() throws when no address can be determined (some CLI and faux requests);
			// an empty address is reported rather than the event being lost.
			return '';
		}
	}

	/**
	 * @param mixed $value
	 * @param int $max longest result, in characters
	 * @return string|null
	 */
	private static function stringOrNull( $value, int $max = self::MAX_NAME ): ?string {
		return is_string( $value ) || is_int( $value ) ? self::cut( (string)$value, $max ) : null;
	}

	/**
	 * @param string $id
	 * @return string at most 128 characters, never empty (the bridge requires one)
	 */
	private static function requestId( string $id ): string {
		return $id === '' ? '-' : self::cut( $id, self::MAX_REQUEST_ID );
	}

	private static function cut( string $value, int $max ): string {
		return mb_strlen( $value ) > $max ? mb_substr( $value, 0, $max ) : $value;
	}
}
